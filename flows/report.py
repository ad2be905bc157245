"""The benchmark report: one parent MLflow run → report.md and a self-contained report.html.

The report is what people hand around, so it is built only from what MLflow
stored (never from in-memory results): ``fedsim report`` months later gives the
same file as the one ``fedsim run`` wrote, byte for byte apart from the
"Generated:" line. Everything else in it — numbers, plots, order — is a pure
function of the stored runs.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient

from flows.machine_load import BUSY_CORES
from flows.report_data import ReportData, find_parent_run, load_report_data
from flows.report_plots import PLOTS, write_plots

__all__ = [
    "NOT_PRIVATE",
    "REPORTS_DIR_ENV",
    "ReportData",
    "ReportFiles",
    "artifact_key",
    "build_report",
    "find_parent_run",
    "load_report_data",
    "publish_report",
    "render_html",
    "render_markdown",
    "reports_dir",
]

REPORTS_DIR_ENV = "FEDSIM_REPORTS_DIR"  # where `fedsim run` writes reports (default reports/)
_VERSIONS = (
    *("python_version", "version.torch", "version.prefect", "version.mlflow"),
    *("version.torchvision", "version.numpy", "version.fedsim"),
)
_TEXT_COLUMNS = {"level", "aggregation", "robust aggregator", "attack"}  # left-aligned
# Said next to the ε of a level run with --dp-noise-seed (tag fedsim.dp.private=false).
NOT_PRIVATE = "not private (reproducible noise seed)"
_CONFIG_ARTIFACT = "the parent run's MLflow artifact experiment.toml (every option of this run)"
_BUSY_NOTE = (
    f"a slowdown marked ⚠ was measured while other processes held at least {BUSY_CORES} of "
    "the machine's cores on average (the level's metric machine_other_cores): it is not the "
    "code's alone; run again on an idle machine to compare"
)


@dataclass(frozen=True)
class ReportFiles:
    """Where one report was written."""

    directory: Path
    markdown: Path
    html: Path
    images: tuple[Path, ...]


def reports_dir() -> Path:
    """``$FEDSIM_REPORTS_DIR`` or ``reports/`` (git-ignored, docs/design.md "Layout")."""
    return Path(os.environ.get(REPORTS_DIR_ENV) or "reports")


def artifact_key(experiment: str) -> str:
    """Prefect artifact key (lowercase letters, digits, dashes) for ``experiment``."""
    slug = re.sub(r"[^a-z0-9]+", "-", experiment.lower()).strip("-")
    return f"fedsim-report-{slug or 'experiment'}"


def _present(value: Any) -> bool:
    return bool(pd.notna(value))  # None and NaN (pandas' missing float) are absent


def _fmt(value: Any, spec: str) -> str:
    return format(value, spec) if _present(value) else "—"


def _summary_rows(levels: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the summary table; optional columns only where present."""
    columns: list[tuple[str, str, str]] = [  # header, field, format spec
        ("level", "run_name", "s"),
        ("final accuracy", "final_accuracy", ".2%"),
        ("training s", "train_seconds", ".2f"),
        ("slowdown vs baseline", "slowdown_vs_baseline", ".2f"),
        ("MB communicated", "megabytes", ".2f"),
        ("aggregation", "aggregation", "s"),
    ]
    optional = [
        ("DP ε", "dp_epsilon", ".3g"),
        ("robust aggregator", "aggregator", "s"),
        ("attack", "attack", "s"),
        ("flag recall", "flag_recall", ".2f"),
        ("dropped workers", "dropped_workers", ".0f"),
        ("enc-eval slowdown vs plaintext", "slowdown_vs_plaintext", ".1f"),
        ("plaintext accuracy", "plaintext_accuracy", ".2%"),
    ]
    frame = levels.copy()
    if frame.empty:
        return [c[0] for c in columns], []
    frame["megabytes"] = frame["bytes_total"].map(lambda b: b / 1e6 if _present(b) else None)
    for header, name, spec in optional:
        values = frame[name].tolist()
        if name == "dropped_workers":
            values = [v for v in values if _present(v) and v > 0]
        if name == "aggregator":  # shown when some level is not plain FedAvg
            values = [v for v in values if v != "fedavg"]
        if name == "dp_epsilon":  # a seeded DP level is shown, ε or not
            values += [True for v in frame.get("dp_private", pd.Series()) if v == "false"]
        if any(_present(v) for v in values):
            columns.append((header, name, spec))
    rows = []
    for record in frame.to_dict("records"):
        cells = [_fmt(record[name], spec) for _, name, spec in columns]
        if _present(record["slowdown_vs_baseline"]):
            cells[3] += "×"
            busy = record.get("machine_other_cores")
            if _present(busy) and busy >= BUSY_CORES:  # measured on a shared, loaded machine
                cells[3] += f" ⚠ others held {busy:.1f} cores"
        if record["aggregation"] == "none":
            cells[5] = "—"
        if record.get("dp_private") == "false" and ("DP ε", "dp_epsilon", ".3g") in columns:
            at = columns.index(("DP ε", "dp_epsilon", ".3g"))
            cells[at] += f" — {NOT_PRIVATE}"
        rows.append(cells)
    return [c[0] for c in columns], rows


def _reproducibility(data: ReportData) -> list[tuple[str, str]]:
    """Label → value pairs that pin down how to get these runs again."""
    tags, params = data.parent.data.tags, data.parent.data.params
    commit = tags.get("git_commit", "unknown")
    items = [("git commit", f"{commit} (dirty: {tags.get('git_dirty', 'unknown')})")]
    for key in _VERSIONS:
        if key in tags:
            items.append((key.removeprefix("version.").replace("_version", ""), tags[key]))
    seeds = sorted({str(s) for s in data.levels.get("seed", pd.Series()).dropna()})
    items.append(("seed(s)", ", ".join(seeds) or params.get("seed", "unknown")))
    samples = f"{params.get('train_samples', '?')} train / {params.get('test_samples', '?')} test"
    if "task" in params:
        items.append(("task", f"{params['task']} ({samples} samples)"))
    else:
        items.append(("dataset", f"{params.get('dataset', 'unknown')} ({samples} samples)"))
    # Runs before tasks existed tagged the dataset's checksum alone.
    fingerprint = tags.get("task_fingerprint", tags.get("dataset_checksum", "unknown"))
    items.append(("task fingerprint (code, data sha256)", fingerprint))
    items.append(("MLflow run", f"{data.parent.info.run_id} in experiment {data.experiment!r}"))
    return items


def _header(data: ReportData) -> tuple[str, str]:
    info = data.parent.info
    started = datetime.fromtimestamp(info.start_time / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")
    title = f"fedsim report — {info.run_name or info.run_id}"
    return title, f"Experiment {data.experiment!r}, run started {started} UTC, {info.status}."


def _measured_busy(data: ReportData) -> bool:
    """Whether some level ran while other processes held the cores (flows.machine_load)."""
    if "machine_other_cores" not in data.levels:
        return False
    busy = [v for v in data.levels["machine_other_cores"].tolist() if _present(v)]
    return any(v >= BUSY_CORES for v in busy)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(data: ReportData, generated: str, *, images: bool = True) -> str:
    """report.md; ``images=False`` leaves the plots out (the Prefect artifact)."""
    title, subtitle = _header(data)
    headers, rows = _summary_rows(data.levels)
    lines = [f"# {title}", "", f"Generated: {generated}", "", subtitle, ""]
    note = data.parent.data.tags.get("mlflow.note.content")
    if note:
        lines += [note, ""]
    lines += ["## Summary", "", "| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(":---" if h in _TEXT_COLUMNS else "---:" for h in headers) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    lines.append("")
    if images:
        lines += ["## Plots", ""]
        lines += [f"![{caption}]({name})\n" for name, caption in PLOTS.items()]
    lines += ["## Reproducibility", ""]
    lines += [f"- {label}: `{value}`" for label, value in _reproducibility(data)]
    command = data.parent.data.tags.get("fedsim.command", "unknown (not logged by this version)")
    lines += ["", "Reproduce with:", "", "```sh", command, "```", ""]
    lines += [f"or `fedsim run --config experiment.toml` with {_CONFIG_ARTIFACT}.", ""]
    if _measured_busy(data):
        lines += [f"⚠ {_BUSY_NOTE}", ""]
    return "\n".join(lines)


_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em; }
h2 { border-bottom: 1px solid #ddd; margin-top: 1.8em; } .meta, figcaption { color: #555; }
table { border-collapse: collapse; } tbody tr:nth-child(even) { background: #fafafa; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f3f3f3; } .text { text-align: left; } dt { font-weight: 600; }
figure img { max-width: 100%; height: auto; }
pre { background: #f5f5f5; padding: 0.8em; white-space: pre-wrap; } dd { margin: 0 0 0.4em 1.2em; }
"""


def render_html(data: ReportData, generated: str, images: dict[str, bytes]) -> str:
    """report.html: inline CSS, PNGs as data URIs — no file or network besides itself."""
    esc = html.escape
    title, subtitle = _header(data)
    headers, rows = _summary_rows(data.levels)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="meta">Generated: {esc(generated)}</p>',
        f'<p class="meta">{esc(subtitle)}</p>',
    ]
    note = data.parent.data.tags.get("mlflow.note.content")
    if note:
        out.append(f"<p>{esc(note)}</p>")
    out += ["<h2>Summary</h2>", '<table id="summary">', "<thead><tr>"]
    align = ["" if h not in _TEXT_COLUMNS else ' class="text"' for h in headers]
    out += [f"<th{a}>{esc(h)}</th>" for a, h in zip(align, headers, strict=True)]
    out += ["</tr></thead>", "<tbody>"]
    for row in rows:
        cells = (f"<td{a}>{esc(c)}</td>" for a, c in zip(align, row, strict=True))
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>", "<h2>Plots</h2>"]
    for name, caption in PLOTS.items():
        encoded = base64.b64encode(images[name]).decode("ascii")
        out.append(
            f'<figure><img src="data:image/png;base64,{encoded}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    out += ["<h2>Reproducibility</h2>", "<dl>"]
    for label, value in _reproducibility(data):
        out.append(f"<dt>{esc(label)}</dt><dd><code>{esc(value)}</code></dd>")
    command = data.parent.data.tags.get("fedsim.command", "unknown (not logged by this version)")
    out += ["</dl>", "<p>Reproduce with:</p>", f'<pre id="command">{esc(command)}</pre>']
    out += [
        f"<p>or <code>fedsim run --config experiment.toml</code> with {esc(_CONFIG_ARTIFACT)}.</p>"
    ]
    if _measured_busy(data):
        out += [f"<p>⚠ {esc(_BUSY_NOTE)}</p>"]
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def _safe(name: str) -> str:
    """A path component for an experiment name (which may contain '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip(".") or "experiment"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _write(data: ReportData, out_dir: Path) -> ReportFiles:
    directory = Path(out_dir) / _safe(data.experiment) / data.parent.info.run_id
    directory.mkdir(parents=True, exist_ok=True)
    pngs = write_plots(data.series, directory)
    generated = _now()
    markdown = directory / "report.md"
    markdown.write_text(render_markdown(data, generated), encoding="utf-8")
    page = directory / "report.html"
    images = {name: path.read_bytes() for name, path in pngs.items()}
    page.write_text(render_html(data, generated, images), encoding="utf-8")
    return ReportFiles(directory, markdown, page, tuple(pngs.values()))


def build_report(
    experiment: str,
    parent_run_id: str | None,
    out_dir: Path,
    *,
    client: MlflowClient | None = None,
) -> ReportFiles:
    """Write ``out_dir/<experiment>/<run_id>/`` report.md, report.html and the PNGs.

    ``parent_run_id=None`` reports the experiment's latest benchmark run.
    """
    return _write(load_report_data(experiment, parent_run_id, client), out_dir)


def publish_report(
    client: MlflowClient, experiment: str, parent_run_id: str, out_dir: Path | None = None
) -> ReportFiles:
    """Build the report, log it on the parent MLflow run, publish it to Prefect.

    MLflow gets the files under ``report/`` of the parent run's artifacts; the
    Prefect markdown artifact (attached to the current flow run) carries the
    summary and the reproducibility block — Prefect cannot show the PNGs, so it
    points to report.html instead.
    """
    from prefect.artifacts import create_markdown_artifact

    data = load_report_data(experiment, parent_run_id, client)
    files = _write(data, out_dir or reports_dir())
    client.log_artifacts(parent_run_id, str(files.directory), artifact_path="report")
    markdown = render_markdown(data, _now(), images=False)
    markdown += f"\nFull report with plots: `{files.html.resolve()}`\n"
    create_markdown_artifact(
        key=artifact_key(experiment),
        markdown=markdown,
        description=f"fedsim benchmark report, MLflow run {parent_run_id}",
    )
    return files
