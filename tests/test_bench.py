"""The checkpoint benchmark with several processes (``python -m segtrain.bench checkpoint
--processes 2``) runs real ranks and prints its ratios against DCP, measured in one run."""

import subprocess
import sys

from conftest import REPO


def test_the_sharded_checkpoint_benchmark_compares_two_ranks_with_dcp_and_prices_the_agreement(tmp_path, measured):
    done = subprocess.run([sys.executable, "-m", "segtrain.bench", "checkpoint", "--processes", "2", "--size", "8MB",
                           "--repeats", "2", "--dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for row in ("dcp.save", "dcp.async_save: blocked", "segtrain save (shards, hashed, committed)", "dcp.load",
                "segtrain load (verify + restore)", "dcp.load, resharded", "segtrain load, resharded",
                "stop agreement per step"):
        assert row in out, out
    assert list(tmp_path.iterdir()) == []  # its scratch folder is gone
    ratios = [line for line in out.splitlines() if " / " in line or "agreement" in line]
    measured("sharded checkpoints, 2 ranks, 8 MB", "; ".join(" ".join(line.split()) for line in ratios))


def test_make_bench_train_runs_in_its_quick_mode_and_prints_every_case():
    """The README's `make bench-train` (it once broke silently when the settings became a dataclass)."""
    import os

    venv = sys.prefix  # the environment running the tests: nothing is installed
    done = subprocess.run(["make", "-o", f"{venv}/.installed", "bench-train", f"VENV={venv}",
                           "BENCH_TRAIN=--quick --repeats 1"], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for case in ("small CNN, PyTorch", "mid-size MLP, PyTorch", "small CNN, Keras", "PNG files, PyTorch loader",
                 "tiny model (loop overhead)", "pipeline loop overhead:"):
        assert case in done.stdout, done.stdout
