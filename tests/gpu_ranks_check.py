"""GPU check of segments on several processes (not part of `make test`, which must pass without a GPU).

    python tests/gpu_ranks_check.py OUT_DIR [--steps 300]

Through the real ``snakemake`` on a temporary copy of the workflow, with every GPU of the machine
(one process per GPU, NCCL; on a machine without CUDA, 2 processes on the CPU with gloo, which
checks the script itself):
1. DDP: the run in 1 segment and in 3 segments: bitwise identical final state.
2. FSDP2 (``data_parallel: fsdp2``): the same, from sharded checkpoints.
3. Timings: the measured step, save and load seconds of each run (its costs.json) against a run
   of one process on one device, and the samples per second they imply.

With one GPU, NCCL cannot run two processes on it: the script says so and checks one process
only. Prints a table and writes OUT_DIR/gpu_ranks_check.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
CNN = {"task": "examples/digits_cnn_torch.py", "params": {"channels": 32, "dropout": 0.3, "lr_step": 300},
       "batch_size": 64, "checkpoint": {"every_steps": 25}}


def devices() -> tuple[str, int]:
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.cuda.device_count()
    return "cpu", 2


def project(root: Path, runs: dict, steps: int) -> Path:
    """A copy of the workflow (the test suite's ``Project``) with these runs in its config."""
    from conftest import Project

    p = Project(root)
    p.write_config({name: {**spec, "total_steps": steps} for name, spec in runs.items()}, time_limit="30m",
                   safety_margin="10s", log_every=25, measure_steps=10, measure_saves=3)
    return p.root


def final_arrays(run_dir: Path) -> dict:
    """Every tensor of the run's last checkpoint, sharded or not, by file and key."""
    import torch

    last = sorted((run_dir / "segments").iterdir())[-1] / "state"
    arrays = {}
    for f in sorted(last.glob("*.pt")):
        def walk(value, key):
            if torch.is_tensor(value):
                arrays[key] = value.cpu()
            elif isinstance(value, dict):
                for k, v in value.items():
                    walk(v, f"{key}.{k}")
            elif isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    walk(v, f"{key}.{i}")
        walk(torch.load(f, map_location="cpu", weights_only=True), f.name)
    return arrays


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kind, count = devices()
    processes = count if kind == "cpu" or count > 1 else 1
    runs = {"one": {**CNN, "steps_per_segment": args.steps}}
    pairs = []
    if processes > 1:
        for mode in ("ddp", "fsdp2"):
            spec = {**CNN, "processes": processes, "data_parallel": mode}
            runs[f"{mode}-whole"] = {**spec, "steps_per_segment": args.steps}
            runs[f"{mode}-thirds"] = {**spec, "steps_per_segment": -(-args.steps // 3)}
            pairs.append((f"{mode}-whole", f"{mode}-thirds"))
    work = Path(tempfile.mkdtemp(prefix="segtrain-gpu-ranks-"))
    result = {"device": kind, "devices": count, "processes": processes, "steps": args.steps}
    if processes == 1:
        result["note"] = "one GPU: NCCL runs one process per GPU, so only one process was checked"
    try:
        root = project(work / "proj", runs, args.steps)
        done = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "--cores", str(max(2, processes))],
                              cwd=root, capture_output=True, text=True)
        result["snakemake_exit"] = done.returncode
        if done.returncode != 0:
            result["error"] = done.stderr[-3000:]
        else:
            results = work / "proj" / "results"
            for a, b in pairs:
                result[f"{a} vs {b}: bitwise identical"] = same(final_arrays(results / a), final_arrays(results / b))
            for name in runs:
                costs = json.loads((results / name / "costs.json").read_text())
                result[f"{name}: step/save/load s"] = [round(costs[k], 5) for k in
                                                       ("step_seconds", "save_seconds", "load_seconds")]
                result[f"{name}: samples/s"] = round(CNN["batch_size"] / costs["step_seconds"], 1)
            one = json.loads((results / "one" / "costs.json").read_text())["step_seconds"]
            for name in runs:
                if name != "one":
                    step = json.loads((results / name / "costs.json").read_text())["step_seconds"]
                    result[f"{name}: step time / one process's"] = round(step / one, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "gpu_ranks_check.json").write_text(json.dumps(result, indent=1))
    for k, v in result.items():
        print(f"{k:<48} {v}")
    failed = "error" in result or any(v is False for k, v in result.items() if "bitwise" in k)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
