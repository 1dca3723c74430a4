"""GPU checks of the pipeline's training loop (not part of `make test`, which must pass without a GPU).

    python tests/gpu_train_check.py OUT_DIR [--quick]

1. exact resume on the device, per training setting: fp32, bf16 autocast, fp16 with a GradScaler,
   accumulation 4 with clipping, and loader workers 2 on an augmenting Dataset. Each is trained as
   one segment and as two segments in two processes; with ``deterministic: true`` the final weights
   must be bitwise identical. ``deterministic: false`` is run too and only reported: it promises
   nothing. A setting that fails (an op without a deterministic CUDA kernel raises) is reported
   with its error; the other checks go on.
2. throughput: steps/s of the pipeline's loop against a minimal hand-written loop on the same model,
   data, batch size, precision and device (``tests/bench_train.py``), for the small CNN and the mid-size
   MLP; the pipeline with ``deterministic`` true against false (what determinism costs); the
   GPU's utilisation during each pipeline run, sampled by ``nvidia-smi``.

Prints a table and writes OUT_DIR/gpu_train_check.json. On a machine without CUDA it runs on the
CPU (fp16 where the CPU has it), which checks the script itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from segtrain.layout import SEGMENT_STATE  # noqa: E402
from segtrain.settings import RunSettings  # noqa: E402

CNN = {"task": "examples/digits_cnn_torch.py", "params": {"channels": 16, "dropout": 0.3, "lr_step": 300}}
SETTINGS = {  # name -> the run's task and training keys
    "fp32": CNN,
    "bf16": {**CNN, "precision": "bf16"},
    "fp16": {**CNN, "precision": "fp16"},
    "accumulate 4, clip 0.5": {**CNN, "accumulate": 4, "clip_grad_norm": 0.5},
    "workers 2, augmenting Dataset": {"task": "tests/tasks/augment_digits_torch.py", "params": {}, "num_workers": 2},
}


def run_settings(settings: dict) -> RunSettings:
    return RunSettings(**{"name": "gpu", "log_every": 50, "model_hash": "gpu-train-check", "async_save": True,
                          **settings, "task": str(REPO / settings["task"])})


def child(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def child_main(argv: list[str]) -> None:
    """One train segment in this process: root start end settings-json [previous]."""
    import torch

    from segtrain.planning import Segment
    from segtrain.runner import RunPaths, run_segment

    root, start, end, settings = Path(argv[0]), int(argv[1]), int(argv[2]), json.loads(argv[3])
    prev = argv[4] if len(argv) > 4 else ""
    paths = RunPaths(root)
    seg = Segment(index=1 if start else 0, start=start, end=end, interval=50, time_limit=3600, save_seconds=0.05)
    out = paths.segment_dir(seg.index)
    run_segment(run_settings(settings), seg, paths, Path(prev) / SEGMENT_STATE if prev else None, out)
    state = torch.load(out / SEGMENT_STATE / "state.pt", map_location="cpu", weights_only=True)
    digest = hashlib.sha256(b"".join(v.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                                     for v in state["model"].values())).hexdigest()
    print(json.dumps({"device": "cuda" if torch.cuda.is_available() else "cpu", "weights_sha256": digest}))


def exact_resume(work: Path, settings: dict, steps: int) -> dict:
    """One segment against two in two processes; whether the final weights are bitwise equal."""
    half = steps // 2
    try:
        one = child([str(work / "one"), "0", str(steps), json.dumps(settings)])
        child([str(work / "two"), "0", str(half), json.dumps(settings)])
        two = child([str(work / "two"), str(half), str(steps), json.dumps(settings),
                     str(work / "two" / "segments" / "0000")])
    except RuntimeError as exc:
        return {"error": str(exc)}
    return {"device": one["device"], "bitwise_identical": one["weights_sha256"] == two["weights_sha256"]}


class Utilisation:
    """``nvidia-smi`` sampling the GPU's utilisation every 100 ms while it is open (None without one)."""

    def __enter__(self):
        self.proc = None
        try:
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "100"], stdout=subprocess.PIPE, text=True)
        except OSError:
            pass
        return self

    def __exit__(self, *exc):
        self.samples = []
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate()
            self.samples = [int(x) for x in out.split() if x.isdigit()]

    @property
    def percent(self) -> float | None:
        busy = self.samples[len(self.samples) // 5:]  # past the start-up
        return statistics.mean(busy) if busy else None


def throughput(steps: int, repeats: int) -> list[dict]:
    import bench_train as bench  # tests/bench_train.py, beside this file

    mlp = Path(__file__).resolve().parent / "tasks" / "bench_mlp_torch.py"
    cnn = str(REPO / CNN["task"])
    rows = []
    for case, task, n in (("small CNN", cnn, steps), ("mid-size MLP", str(mlp), steps // 2)):
        for precision in ("fp32", "bf16", "fp16"):
            runs: dict[str, list[float]] = {"hand": [], "pipeline": [], "pipeline, deterministic false": []}
            busy: list[float] = []
            for r in range(repeats):
                order = list(runs) if r % 2 == 0 else list(runs)[::-1]
                for variant in order:
                    try:
                        if variant == "hand":
                            rate = bench.hand_rate_torch(task, n, precision=precision)
                        else:
                            deterministic = variant == "pipeline"
                            with Utilisation() as u:
                                rate = bench.pipeline_rate(task, n, precision=precision, deterministic=deterministic)
                            if deterministic and u.percent is not None:
                                busy.append(u.percent)
                    except Exception as exc:  # an op without a deterministic kernel, fp16 on a CPU without it
                        rows.append({"case": case, "precision": precision, "variant": variant,
                                     "error": f"{type(exc).__name__}: {exc}"[:300]})
                        rate = float("nan")
                    runs[variant].append(rate)
            hand = runs["hand"]
            for variant, rates in runs.items():
                ok = [x for x in rates if x == x]  # a run that raised is NaN, and its error has a row
                paired = [a / b for a, b in zip(rates, hand) if a == a and b == b]
                if not ok or not paired:
                    continue
                rows.append({"case": case, "precision": precision, "variant": variant,
                             "steps_per_s": statistics.median(ok), "vs_hand": statistics.median(paired),
                             "runs": rates, "gpu_utilisation_percent": statistics.mean(busy) if busy and
                             variant == "pipeline" else None})
    return rows


def main(out_dir: Path, quick: bool) -> dict:
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "torch": torch.__version__, "exact_resume": {}}
    work = Path(tempfile.mkdtemp(prefix="segtrain-gpu-train-check-"))
    steps = 100 if quick else 400
    for name, settings in SETTINGS.items():
        report["exact_resume"][name] = exact_resume(work / name.replace(" ", "_").replace(",", ""), settings, steps)
        print(name, report["exact_resume"][name], flush=True)
    name = "fp32, deterministic false (reported, not promised)"
    report["exact_resume"][name] = exact_resume(work / "nondeterministic", {**CNN, "deterministic": False}, steps)
    print(name, report["exact_resume"][name], flush=True)

    t = time.perf_counter()
    report["throughput"] = throughput(200 if quick else 2000, 1 if quick else 3)
    report["throughput_seconds"] = time.perf_counter() - t
    print(f"{'case':<14} {'precision':<9} {'variant':<31} {'steps/s':>9} {'vs hand':>8} {'GPU %':>6}")
    for row in report["throughput"]:
        if "error" in row:
            print(f"{row['case']:<14} {row['precision']:<9} {row['variant']:<31} error: {row['error']}")
            continue
        busy = row["gpu_utilisation_percent"]
        print(f"{row['case']:<14} {row['precision']:<9} {row['variant']:<31} {row['steps_per_s']:>9.1f} "
              f"{row['vs_hand']:>8.2f} {'' if busy is None else f'{busy:.0f}':>6}")
    (out_dir / "gpu_train_check.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        args = [a for a in sys.argv[1:] if not a.startswith("--")]
        main(Path(args[0] if args else "gpu-out"), quick="--quick" in sys.argv)
        os._exit(0)  # loader workers or nvidia-smi left behind must not hold the machine
