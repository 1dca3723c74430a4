"""Helpers for end-to-end tests: a private copy of the workflow and the real snakemake command."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segtrain.layout import DEFAULT_CHECKPOINT_ROOT, SEGMENT_STATE, SEGMENT_SUMMARY, RunPaths, run_root

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
    # the measure job's resume check (two more jobs per run) runs where a test asks for it: its own
    # tests (test_e2e_resume_check.py) and those whose plan's verdict they compare with the run
    "resume_check": "off",
}
MLP = {"task": "examples/digits_mlp_torch.py", "params": {"hidden": 32, "lr": 0.05}}
CNN = {"task": "examples/digits_cnn_torch.py", "params": {"channels": 8, "dropout": 0.3, "lr": 0.003, "lr_step": 300}}
KMLP = {**MLP, "task": "examples/digits_mlp_keras.py", "framework": "keras"}
KCNN = {**CNN, "task": "examples/digits_cnn_keras.py", "framework": "keras"}
# name -> (task settings, total steps): the example tasks in both frameworks
TASKS = {"mlp": (MLP, 1500), "cnn": (CNN, 1000), "kmlp": (KMLP, 600), "kcnn": (KCNN, 500)}


class Project:
    """A copy of the workflow in a temporary folder, run with the real snakemake."""

    # what snakemake makes when a test names nothing: a module that reads no figure sets
    # SNAKEMAKE_TARGETS = ("models",) (the plan and the exports only; set per test, below)
    targets: tuple[str, ...] = ()

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, root / name)
        shutil.copytree(REPO / "tests" / "tasks", root / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
        (root / "config").mkdir()

    def write_config(self, runs: dict, **defaults) -> Path:
        cfg = {"defaults": {**TEST_DEFAULTS, **defaults}, "runs": runs}
        path = self.root / "config" / "config.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def snakemake(self, *args, check=True, timeout=600, env=None) -> subprocess.CompletedProcess:
        cmd = [SNAKEMAKE, *self.targets, *args] if any(a.startswith("--profile") for a in args) else \
            [SNAKEMAKE, "--cores", "2", *self.targets, *args]
        r = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}")
        return r

    def popen(self, *args, **kw) -> subprocess.Popen:
        return subprocess.Popen([SNAKEMAKE, "--cores", "2", *self.targets, *args], cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **kw)

    def git_commit_all(self, *, leave_out: tuple[str, ...] = ()) -> None:
        """Make the copy a git repository with everything committed (but ``leave_out``), as a clone is:
        jobs without a shared file system receive git-tracked files only."""
        git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
        if not (self.root / ".git").exists():
            subprocess.run([*git, "init", "-q"], cwd=self.root, check=True)
            (self.root / ".gitignore").write_text("results/\nlogs/\nbenchmarks/\n.snakemake/\n__pycache__/\n")
        subprocess.run([*git, "add", "-A"], cwd=self.root, check=True)
        if leave_out:
            subprocess.run([*git, "rm", "-q", "--cached", *leave_out], cwd=self.root, check=True)
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "test"], cwd=self.root, check=True)

    def run_dir(self, run: str) -> Path:
        return self.root / run_root(run)

    def paths(self, run: str) -> RunPaths:
        """The run's folders, with the checkpoints where the default configuration keeps them."""
        return RunPaths(self.run_dir(run), checkpoint_root=self.root / DEFAULT_CHECKPOINT_ROOT)

    def attempts(self, run: str) -> list[dict]:
        path = self.paths(run).attempts
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
    """Exported weights as name -> numpy array, loaded with each framework's plain API."""
    path = Path(path)
    if path.suffix == ".keras":
        import keras

        model = keras.models.load_model(path)
        # By position: Keras makes names unique per process (dense, dense_1, ...). A .keras file
        # does not restore seed-generator states (load_model draws new ones): not weights, skipped;
        # final_state() compares them, from the checkpoint itself.
        weights = [v for v in model.variables if "seed_generator" not in v.path]
        return {f"{i:03d}": v.numpy() for i, v in enumerate(weights)}
    import torch

    return {k: v.numpy() for k, v in torch.load(path, weights_only=True).items()}


def final_state(project: "Project", run: str) -> dict:
    """Every array of the run's final checkpoint (Keras: weights, seed generators, optimizer)."""
    return final_state_in(project.run_dir(run))


def last_logged_step(metrics_csv: Path) -> int:
    """The step of the newest row of a segment's working metrics (0 before the first, or while a
    line is being written)."""
    try:
        return int(Path(metrics_csv).read_text().splitlines()[-1].split(",")[2])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def final_state_in(run_dir: Path) -> dict:
    """``final_state`` of the run whose results folder is ``run_dir`` (e.g. in remote storage)."""
    import numpy as np

    last = RunPaths(Path(run_dir)).last_segment_dir() / SEGMENT_STATE
    if (last / "state.bin").exists():  # Keras: raw arrays, indexed in state.json
        import json

        from segtrain.arrays import read_arrays

        return dict(read_arrays(last / "state.bin", json.loads((last / "state.json").read_text())["arrays"]))
    if (last / "state.npz").exists():
        with np.load(last / "state.npz", allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    return torch_state_arrays(last / "state.pt")


def torch_state_arrays(path: Path) -> dict:
    """Every array of a PyTorch checkpoint file: the model's, its optimizers' state, the RNG."""
    import torch

    state = torch.load(path, weights_only=True)
    if state.get("sharded"):  # data_parallel: fsdp2: every rank's shards of the model and optimizer
        return sharded_state_arrays(path.parent, state)
    arrays = {f"model.{k}": v.numpy() for k, v in state["model"].items()}
    # a script's checkpoint holds each tracked object's state (segtrain.session): its optimizers'
    optimizers = {n: o for n, o in state.get("tracked", {"optimizer": state.get("optimizer")}).items()
                  if isinstance(o, dict) and "param_groups" in o}
    for name, optimizer in optimizers.items():
        for pid, slot in optimizer["state"].items():
            arrays.update({f"{name}.{pid}.{k}": torch.as_tensor(v).numpy() for k, v in slot.items()})
    arrays["rng.torch"] = state["rng"]["torch"].numpy()
    return arrays


def sharded_state_arrays(folder: Path, state: dict) -> dict:
    """``torch_state_arrays`` of a sharded checkpoint: each rank's rows of the model and optimizer
    state, and each rank's random streams."""
    import torch

    def plain(value):
        return value["__rows_of_dim0__"] if isinstance(value, dict) else value

    arrays = {"rng.torch": state["rng"]["torch"].numpy()}
    for shard in sorted(folder.glob("shard-*.pt")):
        held = torch.load(shard, weights_only=True)
        for name, saved in held["tracked"].items():
            if "state" in saved and "param_groups" in saved:  # an optimizer
                for pid, slot in saved["state"].items():
                    arrays.update({f"{shard.stem}.{name}.{pid}.{k}": torch.as_tensor(plain(v)).numpy()
                                   for k, v in slot.items()})
            else:
                arrays.update({f"{shard.stem}.{name}.{k}": plain(v).numpy() for k, v in saved.items()})
        arrays[f"{shard.stem}.rng.torch"] = held["rng"]["torch"].numpy()
    return arrays


def model_file(project: "Project", run: str, best: bool = False) -> Path:
    """The exported model: the last (model.pt / model.keras) or the best (model.best.*)."""
    stem = "model.best" if best else "model"
    (found,) = [p for p in (project.run_dir(run) / f"{stem}.pt", project.run_dir(run) / f"{stem}.keras")
                if p.exists()]
    return found


def best_record(project: "Project", run: str) -> dict:
    """The best checkpoint's record (monitor, value, step) kept with the run's last segment."""
    last = project.paths(run).last_segment_dir()
    return json.loads((last / SEGMENT_SUMMARY).read_text())["best"]


def assert_bitwise_equal(a: dict, b: dict):
    import numpy as np

    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"tensor {k} differs"


@pytest.fixture(autouse=True)
def _snakemake_targets(request):
    Project.targets = tuple(getattr(request.module, "SNAKEMAKE_TARGETS", ()))
    yield
    Project.targets = ()


@pytest.fixture(autouse=True)
def _each_test_is_a_fresh_job(monkeypatch):
    """A job's clock starts with its process; a test that runs a segment in pytest's long-lived
    worker is a job that starts with the test (the worker's age would eat the time limit)."""
    import time

    from segtrain import measure, runner

    began = time.time()
    monkeypatch.setattr(runner, "process_age", lambda: time.time() - began)
    monkeypatch.setattr(measure, "process_age", lambda: time.time() - began)


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path / "proj")


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Project:
    """Every example task trained as 1 and as 5 segments; the 1-segment runs are the reference."""
    p = Project(tmp_path_factory.mktemp("baseline") / "proj")
    runs = {}
    for name, (task, total) in TASKS.items():
        runs[f"{name}-1"] = {**task, "total_steps": total, "steps_per_segment": total}
        runs[f"{name}-5"] = {**task, "total_steps": total, "steps_per_segment": total // 5}
    p.write_config(runs)
    p.snakemake()
    return p


@pytest.fixture
def measured(record_property):
    """``measured(label, text)``: a number the test measured, printed at the end of the run (from
    any xdist worker) under 'measured in this run'."""
    def note(label: str, text: str) -> None:
        record_property(MEASURED, f"[{label}] {text}")

    return note


MEASURED = "segtrain-measured"


def pytest_terminal_summary(terminalreporter):
    notes = [value for report in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
             for name, value in getattr(report, "user_properties", ()) if name == MEASURED]
    if notes:
        terminalreporter.section("measured in this run")
        for note in notes:
            terminalreporter.write_line(note)


# With pytest-xdist (make test runs two workers) each test module goes to one worker whole, so a
# module-scoped fixture trains once; the modules that read the session's ``baseline`` go together
# (collection fails when a module reads it without being named here).
TRAINED_TOGETHER = {"tests/test_e2e_resume.py": "baseline", "tests/test_e2e_report.py": "baseline"}


# About how long each long scope takes on 2 busy cores (seconds, estimated from CI's slowest durations). The workers
# take the longest first (greedy, longest processing time first): a long module started last would
# keep one worker busy while the other has nothing left. A scope not named here counts as short.
SCOPE_SECONDS = {
    "tests/test_e2e_ranks.py": 1200, "tests/test_e2e_trainers.py": 900, "baseline": 900, "tests/test_e2e_slurm.py": 700,
    "tests/test_e2e_failures.py": 500, "tests/test_e2e_training.py": 350, "tests/test_e2e_keras_fit.py": 350,
    "tests/test_e2e_real_scripts.py": 350, "tests/test_e2e_resume_check.py": 300, "tests/test_e2e_script.py": 300,
    "tests/test_e2e_exactness.py": 250, "tests/test_e2e_attempts.py": 250, "tests/test_e2e_dsri_workspace.py": 200,
    "tests/test_e2e_rerun.py": 200, "tests/test_e2e_epochs.py": 150, "tests/test_e2e_compat.py": 150,
    "tests/test_e2e_dsri_pod.py": 150, "tests/test_e2e_workers.py": 90, "tests/test_config.py": 70,
    "tests/test_world.py": 60, "tests/test_e2e_profiles.py": 50,
}


def scope_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0]
    return TRAINED_TOGETHER.get(module, module)


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        if "baseline" in getattr(item, "fixturenames", ()) and TRAINED_TOGETHER.get(module) != "baseline":
            raise pytest.UsageError(f"{item.nodeid} reads the session's baseline: add {module} to TRAINED_TOGETHER "
                                    "in tests/conftest.py, so that xdist runs it on the worker that trained it")
    items.sort(key=lambda item: -SCOPE_SECONDS.get(scope_of(item.nodeid), 0))  # stable: the rest keep their order


try:
    from xdist.scheduler import LoadScopeScheduling
except ImportError:  # without pytest-xdist the tests run one at a time
    LoadScopeScheduling = None

if LoadScopeScheduling is not None:
    class _ModulesTogether(LoadScopeScheduling):
        """xdist's scheduling by scope, where a scope is a test module, or a group of modules that
        share a session fixture (``TRAINED_TOGETHER``)."""

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        config.option.loadscopereorder = False  # the collection's order is already longest first
        return _ModulesTogether(config, log)
