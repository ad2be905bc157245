"""Find the user's code by reference: ``package.module:name`` or ``path/to/file.py:name``.

``--strategy`` and ``--task`` name code this way, as Flower's ``ClientApp`` and
``ServerApp`` references do. Only a process's own command line or config file
names what it imports: a reference that arrives over the wire is looked up
among what was loaded, never imported (``fl.tasks.model_task``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from fl.errors import ConfigError

__all__ = ["import_module_at"]


def import_module_at(option: str, where: str) -> ModuleType:
    """The module at ``where``: a .py file, or a dotted name (the working directory too).

    Any failure is one ConfigError line that starts with ``option`` (the flag and
    its value, e.g. ``--task 'my.py:task'``).
    """
    try:
        if where.endswith(".py"):
            path = Path(where)
            # A name of its own: a file called json.py must not replace the json module;
            # the resolved path keeps two files of one name apart.
            key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
            name = f"fedsim_user_{path.stem}_{key}"
            if name in sys.modules:  # loaded once per process, as an import is
                return sys.modules[name]
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None or not path.is_file():
                raise ImportError(f"no file {where}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module  # registered before it runs, as an import does
            try:
                loader_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        if os.getcwd() not in sys.path:  # last: it never shadows an installed module
            sys.path.append(os.getcwd())
        return importlib.import_module(where)
    except ImportError as exc:
        raise ConfigError(f"{option}: cannot import {where!r} ({exc})") from None
    except Exception as exc:  # the user's module raised while it was imported
        raise ConfigError(f"{option}: importing {where!r} failed: {exc}") from None
