"""What every benchmark does last: write its markdown table to a file and print it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_table"]


def write_table(lines: list[str], out: Path) -> None:
    """Join ``lines`` into one markdown document at ``out`` (folders made) and print it."""
    table = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)
