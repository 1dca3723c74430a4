"""Helpers for end-to-end tests: a private copy of the workflow and the real snakemake command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
COPIED = ("Snakefile", "workflow", "scripts", "segtrain", "examples", "profiles")

# Small, quick settings shared by the end-to-end tests.
TEST_DEFAULTS = {
    "time_limit": "10m",
    "safety_margin": "5s",
    "checkpoint": {"every_steps": 50},
    "log_every": 10,
    "measure_steps": 5,
    "measure_saves": 2,
}
MLP = {"task": "examples/digits_mlp_torch.py", "params": {"hidden": 32, "lr": 0.05}}
CNN = {"task": "examples/digits_cnn_torch.py", "params": {"channels": 8, "dropout": 0.3, "lr": 0.003, "lr_step": 300}}


class Project:
    """A copy of the workflow in a temporary folder, run with the real snakemake."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, root / name)
        (root / "config").mkdir()

    def write_config(self, runs: dict, **defaults) -> Path:
        cfg = {"defaults": {**TEST_DEFAULTS, **defaults}, "runs": runs}
        path = self.root / "config" / "config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def snakemake(self, *args, check=True, timeout=600, **popen) -> subprocess.CompletedProcess:
        cmd = [SNAKEMAKE, "--cores", "2", *args]
        r = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}")
        return r

    def popen(self, *args, **kw) -> subprocess.Popen:
        return subprocess.Popen([SNAKEMAKE, "--cores", "2", *args], cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **kw)

    def run_dir(self, run: str) -> Path:
        return self.root / "results" / run

    def attempts(self, run: str) -> list[dict]:
        path = self.run_dir(run) / "ckpt" / "attempts.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> job count from the 'Job stats' table snakemake prints."""
    jobs = {}
    if "Job stats" not in output:
        return jobs
    table = output.split("Job stats:", 1)[1]
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs


def load_weights(path: Path) -> dict:
    import torch

    return torch.load(path, weights_only=True)


def assert_bitwise_equal(a: dict, b: dict):
    import torch

    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"tensor {k} differs"


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "proj")


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Project:
    """Uninterrupted single-segment runs of both example tasks, the reference for exact resume."""
    p = Project(tmp_path_factory.mktemp("baseline") / "proj")
    p.write_config({
        "mlp-1": {**MLP, "total_steps": 1500, "steps_per_segment": 1500},
        "cnn-1": {**CNN, "total_steps": 1000, "steps_per_segment": 1000},
        "mlp-5": {**MLP, "total_steps": 1500, "steps_per_segment": 300},
        "cnn-5": {**CNN, "total_steps": 1000, "steps_per_segment": 200},
    })
    p.snakemake()
    return p
