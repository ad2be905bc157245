"""fl.tasks: a task by reference, its data checked, its failures named, its fingerprint."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from fl.data import Split
from fl.errors import ConfigError
from fl.task_data import task_split
from fl.task_fingerprint import fingerprint_difference, task_fingerprint
from fl.tasks import Task, TaskError, image_task, load_task, model_task
from fl.training import TrainConfig, TrainResult

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, body: str) -> str:
    path.write_text(textwrap.dedent(body))
    return str(path)


TASK_MODULE = textwrap.dedent("""
    import torch
    from torch import nn
    from fl.tasks import Task

    def data(split):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        x = torch.randn(40, 3, generator=g)
        return x, (x[:, 0] > 0).to(torch.int64)

    task = Task(model=lambda: nn.Linear(3, 2), data=data)

    def make():
        return task

    not_a_task = 42

    def fails():
        raise RuntimeError("no such file")
""")


@pytest.fixture
def task_file(tmp_path: Path) -> str:
    return _write(tmp_path / "tiny_task.py", TASK_MODULE)


def test_a_task_by_file_or_function_is_loaded_named_and_split(task_file: str) -> None:
    task = load_task(f"{task_file}:task")
    assert task.name == f"{task_file}:task"
    made = load_task(f"{task_file}:make")  # a function that returns the task
    assert made.name == f"{task_file}:make" and made.model is task.model
    train = task_split(task, train=True, limit=10)
    assert train.x.shape == (10, 3) and train.y.dtype == torch.int64
    assert load_task(f"{task_file}:task") is task  # loaded once per process
    assert model_task(f"{task_file}:task") is task  # and then known by its key


@pytest.mark.parametrize(
    ("attribute", "message"),
    [
        ("not_a_task", "is a int, not a fl.tasks.Task"),
        ("fails", r"fails\(\) failed: no such file"),
        ("missing", "has no 'missing'"),
    ],
)
def test_a_reference_that_is_no_task_is_one_line(
    task_file: str, attribute: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_task(f"{task_file}:{attribute}")
    assert "\n" not in str(caught.value) and "--task" in str(caught.value)


def test_bad_references_are_one_line(tmp_path: Path) -> None:
    for reference, message in [
        ("no_colon", "is not package.module:name"),
        ("no_such_module_xyz:task", "cannot import 'no_such_module_xyz'"),
        (f"{tmp_path}/absent.py:task", "cannot import"),
        (_write(tmp_path / "raises.py", "raise ValueError('bad import')") + ":task",
         "importing .* failed: bad import"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            load_task(reference)


def _task(**fields: object) -> Task:
    base = {
        "model": lambda: nn.Linear(3, 2),
        "data": lambda s: (torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)),
        "name": "t",
    }
    return Task(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda s: (torch.zeros(4, 3), torch.zeros(4)), "y must be int64 labels"),
        (lambda s: (torch.zeros(4, 3), torch.zeros(5, dtype=torch.int64)), "one per row"),
        (lambda s: [1, 2, 3], "returned list, not a Split"),
        (lambda s: 1 / 0, "data\\('train'\\) failed: ZeroDivisionError: division by zero"),
        (lambda s: (torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64)), "is empty"),
    ],
)
def test_unusable_data_is_a_task_error_naming_the_task(data: object, message: str) -> None:
    with pytest.raises(TaskError, match=f"task 't': .*{message}"):
        task_split(_task(data=data), train=True)


def test_a_failing_model_loss_or_step_is_a_task_error_naming_the_task() -> None:
    with pytest.raises(TaskError, match="task 't': model\\(\\) failed: OSError: no weights"):
        _task(model=lambda: (_ for _ in ()).throw(OSError("no weights"))).build()
    with pytest.raises(TaskError, match="model\\(\\) returned int"):
        _task(model=lambda: 3).build()
    data = Split(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    config, generator = TrainConfig(epochs=1, batch_size=2, lr=0.1), torch.Generator()

    def bad_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise ValueError("shape mismatch")

    task = _task(loss=bad_loss)
    with pytest.raises(TaskError, match="task 't': training failed: ValueError: shape mismatch"):
        task.run_train(task.build(), data, config, generator)
    with pytest.raises(TaskError, match="task 't': evaluation failed"):
        task.run_evaluate(task.build(), data)
    wrong = _task(train=lambda m, d, c, g: {"loss": 1.0})
    with pytest.raises(TaskError, match="train\\(\\) returned dict"):
        wrong.run_train(wrong.build(), data, config, generator)


def test_a_tasks_own_train_step_replaces_sgd() -> None:
    calls = []

    def step(model: nn.Module, data: Split, config: TrainConfig, g: torch.Generator) -> TrainResult:
        calls.append(len(data))
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(1.0)
        return TrainResult(num_samples=len(data), steps=1, mean_loss=0.0, seconds=0.0)

    task = _task(train=step)
    model = task.build(seed=0)
    data = Split(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    task.run_train(model, data, TrainConfig(epochs=1, batch_size=2, lr=0.1), torch.Generator())
    assert calls == [4] and all(bool((p == 1).all()) for p in model.parameters())


def test_model_task_never_imports_what_a_request_names(tmp_path: Path) -> None:
    """A request names its model by key; a key this process did not load is refused,
    and the module it names is not run (it would leave a marker file)."""
    marker = tmp_path / "imported"
    evil = _write(tmp_path / "evil_task.py", f"open({str(marker)!r}, 'w').close()\ntask = None\n")
    before = set(sys.modules)
    for key in (f"{evil}:task", "os:system", "subprocess:run"):
        with pytest.raises(ConfigError, match="unknown model"):
            model_task(key)
    assert not marker.exists()
    assert set(sys.modules) == before


def _parts(fingerprint: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in fingerprint.split(" ")[1:])


def test_the_fingerprint_changes_with_the_code_and_with_the_data(tmp_path: Path) -> None:
    def fingerprint(folder: str, body: str) -> str:
        (tmp_path / folder).mkdir()
        return task_fingerprint(load_task(_write(tmp_path / folder / "task.py", body) + ":task"))

    original = fingerprint("a", TASK_MODULE)
    copy = fingerprint("b", TASK_MODULE)  # another checkout of the same file
    edited = fingerprint("c", TASK_MODULE + "\n# a comment is a change of code\n")
    other_data = fingerprint("d", TASK_MODULE.replace("manual_seed(0 if", "manual_seed(5 if"))
    assert _parts(copy) == _parts(original)
    assert _parts(edited)["code"] != _parts(original)["code"]
    assert _parts(edited)["data"] == _parts(original)["data"]
    assert _parts(other_data)["data"] != _parts(original)["data"]
    # What the coordinator says of a worker that differs, by what differs.
    name = original.split(" ")[0]
    renamed = f"{name} " + " ".join(f"{k}={v}" for k, v in _parts(original).items())
    assert "other data" in fingerprint_difference(
        renamed.replace(_parts(original)["data"], "0" * 16), original
    )
    assert "other code" in fingerprint_difference(
        renamed.replace(_parts(original)["code"], "0" * 16), original
    )
    assert "runs task [other.py:task]" in fingerprint_difference(
        "other.py:task code=1 data=2", original
    )


def test_a_builtin_task_is_the_image_data_with_its_model() -> None:
    task = image_task("fashion-mnist", "mlp")
    model = task.build(seed=0)
    assert sum(p.numel() for p in model.parameters()) == 784 * 200 + 200 + 200 * 200 + 200 + 2010
    assert task_split(task, train=False, limit=5).x.shape == (5, 1, 28, 28)
    assert model_task("mlp").build(seed=0).state_dict().keys() == model.state_dict().keys()
    with pytest.raises(ConfigError, match="--model 'resnet'"):
        image_task("fashion-mnist", "resnet")


def test_a_tasks_own_train_step_is_still_clipped_for_client_dp() -> None:
    """--dp client's promise is the worker's: the update is clipped whoever's step
    trained (a task's own step that ignores the config moves far)."""

    def far(model: nn.Module, data: Split, config: TrainConfig, g: torch.Generator) -> TrainResult:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(10.0)
        return TrainResult(num_samples=len(data), steps=1, mean_loss=0.0, seconds=0.0)

    task = _task(train=far)
    model = task.build(seed=0)
    start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    data = Split(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))
    config = TrainConfig(epochs=1, batch_size=2, lr=0.1, update_clip=0.5)
    task.run_train(model, data, config, torch.Generator())
    moved = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
    assert float(moved.norm()) == pytest.approx(0.5, rel=1e-5)


def test_loading_is_reentrant_and_a_relative_file_is_keyed_by_what_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _write(tmp_path / "base_task.py", TASK_MODULE)
    # A task built on another one, loaded while its module is imported.
    _write(
        tmp_path / "derived.py",
        f"from fl.tasks import load_task\nimport dataclasses\n"
        f"task = dataclasses.replace(load_task({base + ':task'!r}), name='')\n",
    )
    assert load_task(f"{tmp_path / 'derived.py'}:task").model is load_task(f"{base}:task").model
    # `task.py:task` in two projects, loaded in turn by one process: two tasks.
    loaded = []
    for project, width in (("one", 3), ("two", 5)):
        (tmp_path / project).mkdir()
        body = TASK_MODULE.replace("nn.Linear(3, 2)", f"nn.Linear({width}, 2)")
        _write(tmp_path / project / "task.py", body)
        monkeypatch.chdir(tmp_path / project)
        loaded.append(load_task("task.py:task").build().in_features)  # type: ignore[union-attr]
    assert loaded == [3, 5]


def test_a_task_whose_fields_do_not_hash_is_cached_by_identity() -> None:
    class Loader:  # a callable object, as a dataclass with __call__ would be
        __hash__ = None  # type: ignore[assignment]

        def __call__(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.ones(6, 3), torch.arange(6) % 2

    task = _task(data=Loader())
    assert task_split(task, train=True) is task_split(task, train=True)
    assert len(task_fingerprint(task).split(" ")) == 3


def test_a_label_flip_flips_over_the_tasks_own_classes(task_file: str) -> None:
    from fl.partition import Partitioning
    from workers.core import TRAIN_Y_ID, WorkerCore

    load_task(f"{task_file}:task")  # two classes
    partitioning = Partitioning(f"{task_file}:task", "iid", 2, 0, None)
    honest = WorkerCore.with_partition("w0", partitioning, 0, data_dir=None)
    flipped = WorkerCore.with_partition("w0", partitioning, 0, data_dir=None, label_flip=True)
    y, y_flipped = honest._objects[TRAIN_Y_ID], flipped._objects[TRAIN_Y_ID]
    assert torch.equal(y_flipped, 1 - y)  # type: ignore[operator]
