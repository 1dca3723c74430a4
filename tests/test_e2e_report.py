"""The HTML report has, for every run, the plan, training curves, checkpoint costs and a timeline."""

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import xml.etree.ElementTree as ET

import pytest

from support import wait_for_checkpoint

pytestmark = pytest.mark.e2e

SECTIONS = {"Plan", "Training", "Checkpoints", "Timeline"}


def read_report(path):
    text = path.read_text()
    found = {}
    for var in ("results", "categories"):
        m = re.search(r"var " + var + r" = (\{.*?\});\n", text, re.S)
        assert m, f"no {var} in the report"
        found[var] = json.loads(m.group(1))
    return found["results"], found["categories"]


def decoded(result):
    header, data = result["data_uri"].split(",", 1)
    return base64.b64decode(data).decode() if "base64" in header else data


def check_run(results, categories, run):
    assert SECTIONS <= set(categories[run]), categories[run]
    for section in SECTIONS:
        for path in categories[run][section]:
            body = decoded(results[path])
            assert results[path]["caption"], f"{path} has no caption"
            if path.endswith(".svg"):
                ET.fromstring(body)  # a complete, parseable image
                assert run in body  # the title names the run
    plan = decoded(results[f"results/{run}/report/plan.html"])  # HTML: shown in the page, not a download
    assert "NCP   = TT / z" in plan and "overhead = TTSC / TT * 100" in plan
    assert "Overhead of the jobs (start-up, restores, saves and evaluations" in plan
    assert "Planned versus measured, per segment" in plan and "measured_startup_s" in plan
    return {os.path.basename(p): decoded(results[p]) for s in SECTIONS for p in categories[run][s]}


def test_report_of_pytorch_and_keras_runs_has_every_section(baseline, tmp_path):
    out = tmp_path / "report.html"
    baseline.snakemake("--report", str(out))
    results, categories = read_report(out)
    for run in ("mlp-5", "cnn-5", "kmlp-5", "kcnn-5"):
        files = check_run(results, categories, run)
        assert "training across 5 segments" in files["training.svg"]
        # validation drawn as points on the loss axis, the best checkpoint marked, metrics of both kinds
        assert "validation loss" in files["training.svg"] and "best val_loss" in files["training.svg"]
        assert "training accuracy" in files["training.svg"] and "validation accuracy" in files["training.svg"]
        assert "global step" in files["checkpoints.svg"] and "cumulative overhead" in files["checkpoints.svg"]
        assert "start-up + restore" in files["timeline.svg"]
        assert files["plan.html"].count("<tr") == 1 + 5 + 0  # header + 5 segments; no failed attempts
        assert "persist_s" in files["plan.html"]  # each segment's background writes beside its blocking saves
        if json.loads((baseline.paths(run).plan).read_text())["async_save"]:  # auto chose it
            assert "its background write (persist)" in files["checkpoints.svg"]
            assert "blocking (copy to host memory" in files["plan.html"]
    assert "results/compare/loss.svg" in results
    assert "digits" not in decoded(results["results/compare/loss.svg"])  # the test's run names, not the demo's
    assert "mlp-5 validation" in decoded(results["results/compare/loss.svg"])


def test_report_of_a_run_with_a_failure_shows_the_kill_and_the_work_lost(project, tmp_path):
    project.write_config({"r": {"task": "tasks/slow_digits_torch.py", "params": {"pause": 0.01},
                                "total_steps": 800, "steps_per_segment": 400}}, checkpoint={"every_steps": 50})
    proc = project.popen()
    store_root = project.paths("r").store
    wait_for_checkpoint(store_root, 560, proc)
    pid = int((store_root / ".lock").read_text().split()[1])
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=120)
    project.snakemake()
    out = tmp_path / "report.html"
    project.snakemake("--report", str(out))
    results, categories = read_report(out)
    files = check_run(results, categories, "r")
    assert "1 restarts" in files["timeline.svg"] and "killed" in files["timeline.svg"]
    assert re.search(r"lost \d+ steps", files["timeline.svg"])
    assert "resume after a failure" in files["training.svg"]
    assert "resume after a stop" not in files["training.svg"]  # a kill is not a deadline stop
    rows = (project.run_dir("r") / "report" / "plan_vs_measured.csv").read_text().splitlines()
    assert rows[2].split(",")[2] == "2"  # segment 1 took two attempts
    assert "killed (no chance to save)" in files["plan.html"]

    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed")
        pytest.skip("chromium is not installed (Debian package chromium)")
    shot = tmp_path / "report.png"
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'chrome'}", "--window-size=1400,1000",
                        "--virtual-time-budget=8000", f"--screenshot={shot}", f"file://{out}"],
                       capture_output=True, text=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000, r.stderr[-2000:]
