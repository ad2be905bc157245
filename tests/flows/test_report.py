"""The benchmark report end to end: real Prefect, real MLflow store, headless Chromium.

One tiny benchmark (baseline + level 2, MLP, 2 workers, 2 rounds) runs once for
the module; every test reads its stored runs.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from fedsim.cli import main
from fl.errors import ConfigError
from flows.benchmark import benchmark_flow
from flows.config import ExperimentConfig
from flows.defence import DP_PRIVATE_TAG
from flows.progress import ProgressSink, use_sink
from flows.report import NOT_PRIVATE, REPORTS_DIR_ENV, artifact_key, build_report
from flows.tracking import BenchmarkTracker
from tests.flows.scenarios import SMALL

pytestmark = pytest.mark.usefixtures("prefect_harness")

EXPERIMENT = "report-test"
ROOT = Path(__file__).resolve().parents[2]
PLOTS = ("accuracy.png", "loss.png", "slowdown.png", "bytes.png")


@dataclass(frozen=True)
class Benchmark:
    result: dict[str, Any]
    root: Path

    @property
    def parent(self) -> str:
        return str(self.result["parent_run_id"])


@pytest.fixture(scope="module")
def benchmark(
    prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Benchmark]:
    """The tiny benchmark, with its own MLflow store and reports folder."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv(REPORTS_DIR_ENV, str(root / "reports"))
        cfg = ExperimentConfig(**{**SMALL, "levels": "baseline,2", "experiment": EXPERIMENT})
        yield Benchmark(benchmark_flow(cfg.to_dict()), root)


def _without_timestamp(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "Generated: " not in line)


def _summary_rows(markdown: str) -> list[str]:
    section = markdown.split("## Summary", 1)[1].split("##", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| L")]


def test_run_writes_the_report_and_publishes_it(benchmark: Benchmark) -> None:
    # Prepare
    client = MlflowClient()
    parent = client.get_run(benchmark.parent)

    # Execute
    page = Path(benchmark.result["report"])
    markdown = (page.parent / "report.md").read_text()

    # Assert: files where promised, one row per level, the reproducibility block.
    assert page == benchmark.root / "reports" / EXPERIMENT / benchmark.parent / "report.html"
    assert all((page.parent / name).stat().st_size > 0 for name in PLOTS)
    rows = _summary_rows(markdown)
    assert [row.split("|")[1].strip() for row in rows] == ["L0 baseline", "L2 federated"]
    assert parent.data.tags["fedsim.command"] in markdown
    assert parent.data.tags["task_fingerprint"] in markdown
    assert parent.data.tags["git_commit"] in markdown
    page_text = page.read_text()
    assert 'src="data:image/png;base64,' in page_text
    assert not re.search(r"(src|href)=\"(?!data:)", page_text)  # nothing outside the file
    stored = {a.path for a in client.list_artifacts(benchmark.parent, "report")}
    assert stored == {f"report/{name}" for name in ("report.md", "report.html", *PLOTS)}


def test_report_is_a_prefect_artifact_of_the_flow_run(benchmark: Benchmark) -> None:
    from prefect.artifacts import Artifact

    # Execute
    artifact: Any = Artifact.get(artifact_key(EXPERIMENT))  # sync here: no event loop

    # Assert
    assert artifact is not None and artifact.type == "markdown"
    assert artifact.flow_run_id is not None
    assert benchmark.parent in str(artifact.data)
    assert "L2 federated" in str(artifact.data)


def test_same_runs_give_the_same_report(benchmark: Benchmark, tmp_path: Path) -> None:
    # Execute: twice from MLflow, besides the one the flow wrote.
    first = build_report(EXPERIMENT, benchmark.parent, tmp_path / "a")
    second = build_report(EXPERIMENT, None, tmp_path / "b")  # None: the latest run
    written = Path(benchmark.result["report"]).parent

    # Assert: byte-identical apart from the timestamp line; PNGs byte-identical.
    for name in ("report.md", "report.html"):
        texts = [(d / name).read_text() for d in (first.directory, second.directory, written)]
        assert texts[0] != _without_timestamp(texts[0])  # the timestamp line is there
        assert len({_without_timestamp(t) for t in texts}) == 1, name
    for name in PLOTS:
        assert len({(d / name).read_bytes() for d in (first.directory, written)}) == 1, name


def test_missing_experiment_or_run_is_one_clear_error(benchmark: Benchmark, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no MLflow experiment 'nope'.*existing: .*report-test"):
        build_report("nope", None, tmp_path)
    with pytest.raises(ConfigError, match=r"no MLflow run 'abc123' in experiment 'report-test'"):
        build_report(EXPERIMENT, "abc123", tmp_path)
    child = benchmark.result["levels"][0]["run_id"]
    with pytest.raises(ConfigError, match="is a level run; pass its parent run"):
        build_report(EXPERIMENT, child, tmp_path)


def test_cli_report(
    benchmark: Benchmark, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    bad = main(["report", "--experiment", "nope"])
    bad_err = capsys.readouterr().err
    good = main(["report", "--experiment", EXPERIMENT, "--out", str(tmp_path)])
    good_out = capsys.readouterr().out

    # Assert
    assert bad == 1
    assert bad_err.strip().splitlines() == [bad_err.strip()]
    assert bad_err.startswith("fedsim: error: no MLflow experiment 'nope'")
    assert good == 0
    assert f"report: {tmp_path / EXPERIMENT / benchmark.parent / 'report.html'}" in good_out


class _Warnings(ProgressSink):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def warning(self, message: str) -> None:
        self.messages.append(message)


def test_a_failing_report_does_not_lose_the_benchmark(
    benchmark: Benchmark, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the report cannot be written.
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("flows.report.publish_report", broken)
    broken_experiment = "report-test-broken"  # keeps the module's latest run the latest
    cfg = ExperimentConfig(
        **{**SMALL, "levels": "baseline", "rounds": 1, "experiment": broken_experiment}
    )

    # Execute
    sink = _Warnings()
    with use_sink(sink):
        result = benchmark_flow(cfg.to_dict())

    # Assert
    assert "report" not in result and len(result["levels"]) == 1
    assert MlflowClient().get_run(result["parent_run_id"]).info.status == "FINISHED"
    assert sink.messages == [
        f"report not written (OSError: disk full); retry with: fedsim report "
        f"--experiment {broken_experiment} --run {result['parent_run_id']}"
    ]


def _synthetic_benchmark() -> str:
    """A parent run whose level runs are logged out of order, with every optional column."""
    tracker = BenchmarkTracker("synthetic")
    parent = tracker.start_parent("benchmark quick", {"seed": "3", "dataset": "mnist"}, "synthetic")
    tracker.set_tags(
        parent, {"fedsim.command": "fedsim run --seed 3", "task_fingerprint": "c0ffee"}
    )
    levels = [  # run name, level tag, params, final metrics
        ("L6 encrypted-eval", "encrypted-eval", {}, {"slowdown_vs_plaintext": 30.5,
         "plaintext_accuracy": 0.8}),
        ("L2 federated (secure)", "federated", {"aggregation": "secure", "aggregator": "median",
         "attack": "label-flip", "attackers": "2"}, {"dp_epsilon": 1.5,
         "slowdown_vs_baseline": 1.25}),
        ("L2 federated", "federated", {"aggregation": "plain"}, {"slowdown_vs_baseline": 1.05,
         "machine_other_cores": 1.4}),
        ("L0 baseline", "baseline", {"aggregation": "none"}, {"slowdown_vs_baseline": 1.0,
         "machine_other_cores": 0.1}),
    ]  # fmt: skip
    for run_name, level, params, final in levels:
        run = tracker.start_level(run_name, level, {"seed": "3", **params})
        for step in (1, 2) if level != "encrypted-eval" else ():
            accuracy, loss, dropped = (
                0.5 + step / 10,
                1.0 / step,
                step == 2 and "secure" in run_name,
            )
            per_round = dict(test_accuracy=accuracy, test_loss=loss, train_loss=loss + 0.2)
            per_round |= dict(bytes_sent=1e6, bytes_received=2e6, dropped_workers=float(dropped))
            if "secure" in run_name:
                per_round["flag_recall"] = step / 2  # mean over rounds: 0.75
            tracker.log_metrics(run, per_round, step=step)
        totals = {"final_accuracy": 0.7, "train_seconds": 2.0, "bytes_total": 6e6}
        tracker.log_metrics(run, totals | final, step=2)
        tracker.finish(run)
    tracker.finish(parent)
    return parent


def test_levels_in_order_with_optional_columns(mlflow_uri: str, tmp_path: Path) -> None:
    # Prepare
    parent = _synthetic_benchmark()

    # Execute
    markdown = build_report("synthetic", parent, tmp_path).markdown.read_text()

    # Assert: level number, plain before secure; optional columns where present.
    header = markdown.split("## Summary", 1)[1].split("\n")[2]
    for column in (
        "DP ε", "robust aggregator", "attack", "flag recall", "dropped workers",
        "enc-eval slowdown",
    ):  # fmt: skip
        assert column in header
    rows = [[cell.strip() for cell in row.split("|")[1:-1]] for row in _summary_rows(markdown)]
    assert [row[0] for row in rows] == [
        "L0 baseline", "L2 federated", "L2 federated (secure)", "L6 encrypted-eval",
    ]  # fmt: skip
    secure, encrypted = rows[2], rows[3]
    assert secure[1:] == ["70.00%", "2.00", "1.25×", "6.00", "secure", "1.5", "median",
                          "label-flip ×2", "0.75", "1", "—", "—"]  # fmt: skip
    assert encrypted[3] == "—" and encrypted[-2:] == ["30.5", "80.00%"]
    assert "`3`" in markdown and "`c0ffee`" in markdown and "fedsim run --seed 3" in markdown
    assert "fedsim run --config experiment.toml" in markdown
    # A slowdown measured while other processes held the cores is flagged; an idle one not.
    plain, baseline = rows[1], rows[0]
    assert plain[3] == "1.05× ⚠ others held 1.4 cores" and baseline[3] == "1.00×"
    assert "⚠ a slowdown marked ⚠ was measured while other processes held" in markdown


def test_a_level_with_a_reproducible_noise_seed_is_reported_as_not_private(
    mlflow_uri: str, tmp_path: Path
) -> None:
    # Prepare: two DP levels, one tagged as a run with --dp-noise-seed.
    tracker = BenchmarkTracker("seeded-dp")
    parent = tracker.start_parent("benchmark quick", {"seed": "0"}, "seeded-dp")
    for name, private in (("L2 federated", "true"), ("L3 decentralized", "false")):
        run = tracker.start_level(name, name.split()[1], {"seed": "0", "aggregation": "plain"})
        tracker.set_tags(run, {DP_PRIVATE_TAG: private})
        tracker.log_metrics(run, {"test_accuracy": 0.5, "final_accuracy": 0.5}, step=1)
        tracker.log_metrics(run, {"dp_epsilon": 2.5}, step=1)
        tracker.finish(run)
    tracker.finish(parent)

    # Execute
    markdown = build_report("seeded-dp", parent, tmp_path).markdown.read_text()

    # Assert: only the seeded level's ε says so.
    rows = {row.split("|")[1].strip(): row for row in _summary_rows(markdown)}
    assert f"2.5 — {NOT_PRIVATE}" in rows["L3 decentralized"]
    assert NOT_PRIVATE == "not private (reproducible noise seed)"
    assert NOT_PRIVATE not in rows["L2 federated"]


# --- headless Chromium ------------------------------------------------------

_CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, complete: img.complete, width: img.naturalWidth};
  });
  var out = document.createElement("pre");
  out.id = "fedsim-check";
  out.textContent = JSON.stringify({
    images: images, rows: document.querySelectorAll("#summary tbody tr").length
  });
  document.body.appendChild(out);
});
</script>
"""


def _chromium() -> str:
    """The Chromium binary; installed through apt where apt exists, else the test skips."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    if shutil.which("apt-get") is None:
        pytest.skip("headless Chromium is not installed and apt-get is unavailable to install it")
    subprocess.run(["sh", str(ROOT / "scripts" / "ensure_chromium.sh")], check=True, timeout=900)
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "scripts/ensure_chromium.sh ran but no chromium is on PATH"
    return found


def _headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        binary, "--headless=new", "--disable-gpu", "--no-sandbox", "--no-first-run",
        "--disable-dev-shm-usage", "--disable-extensions", f"--user-data-dir={profile}",
        "--virtual-time-budget=5000", *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


def test_report_renders_in_headless_chromium(benchmark: Benchmark, tmp_path: Path) -> None:
    # Prepare: a copy of the page with a script that records what loaded.
    binary = _chromium()
    page = Path(benchmark.result["report"])
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    screenshot = tmp_path / "report.png"

    # Execute
    dom = _headless(binary, tmp_path / "profile", "--dump-dom", checked.as_uri()).stdout
    _headless(
        binary, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1200,2000",
        page.as_uri(),
    )  # fmt: skip

    # Assert: every image decoded, one table row per level, a screenshot kept.
    found = re.search(r'<pre id="fedsim-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    status = json.loads(html.unescape(found.group(1)))
    assert len(status["images"]) == len(PLOTS)
    assert all(img["complete"] and img["width"] > 0 for img in status["images"]), status
    assert status["rows"] == len(benchmark.result["levels"])
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"report screenshot: {screenshot}")
