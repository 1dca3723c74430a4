"""GPU checks for a machine with CUDA (not part of `make test`, which must pass without a GPU).

    python tests/gpu_check.py OUT_DIR

1. exact resume on the GPU: the digits CNN (dropout draws from the CUDA RNG) trained as one
   segment and as two segments in separate processes ends bitwise identical, with periodic saves
   written in the background from pinned host buffers (non-blocking device-to-host copies);
2. GPU save/load timings of the pipeline's own measurement (synchronous save, a background save's
   blocking snapshot and its write), for the example models and a larger one;
3. portability: a checkpoint written on the GPU is restored in a CPU-only process
   (CUDA_VISIBLE_DEVICES=) and training continues; and the reverse.
Prints its figures and writes them to OUT_DIR/gpu_check.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from segtrain.layout import SEGMENT_STATE  # noqa: E402
from segtrain.settings import RunSettings  # noqa: E402


def run_settings(task: str, params: dict) -> RunSettings:
    return RunSettings(name="gpu", task=str(REPO / task), params=params, log_every=50, model_hash="gpu-check",
                       measure_steps=30, measure_saves=5, async_save=True)  # snapshots into pinned buffers


def child(args: list[str], cpu_only: bool = False) -> dict:
    env = dict(os.environ)
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def child_main(argv: list[str]) -> None:
    """One train segment in this process: root start end total [previous]."""
    import torch

    from segtrain.planning import Segment
    from segtrain.runner import RunPaths, run_segment

    root, start, end, prev = Path(argv[0]), int(argv[1]), int(argv[2]), argv[3] if len(argv) > 3 else ""
    run = run_settings("examples/digits_cnn_torch.py", {"channels": 16, "dropout": 0.3, "lr_step": 300})
    paths = RunPaths(root)
    seg = Segment(index=start // 300, start=start, end=end, interval=100, time_limit=3600, save_seconds=0.05)
    out = paths.segment_dir(seg.index)
    t = time.perf_counter()
    run_segment(run, seg, paths, Path(prev) / SEGMENT_STATE if prev else None, out)
    state = torch.load(out / SEGMENT_STATE / "state.pt", map_location="cpu", weights_only=True)
    digest = __import__("hashlib").sha256(b"".join(v.cpu().numpy().tobytes() for v in state["model"].values())).hexdigest()
    print(json.dumps({"device": "cuda" if torch.cuda.is_available() else "cpu", "seconds": time.perf_counter() - t,
                      "weights_sha256": digest, "has_cuda_rng": "cuda" in state["rng"]}))


def main(out_dir: Path) -> dict:
    import torch

    from segtrain.measure import measure_costs

    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__}
    work = Path("/tmp/segtrain-gpu-check")
    if work.exists():
        __import__("shutil").rmtree(work)

    # 1. exact resume on the GPU: 600 steps straight vs 300 + 300 in two processes
    one = child([str(work / "one" / "r"), "0", "600"])
    two_a = child([str(work / "two" / "r"), "0", "300"])
    two_b = child([str(work / "two" / "r"), "300", "600", str(work / "two" / "r" / "segments" / "0000")])
    report["gpu_resume_bitwise_identical"] = one["weights_sha256"] == two_b["weights_sha256"]
    report["gpu_devices_used"] = [one["device"], two_a["device"], two_b["device"]]
    report["cuda_rng_saved"] = one["has_cuda_rng"]

    # 3. portability: GPU-written segment 1 continued on a CPU-only process, and CPU -> GPU
    g2c = child([str(work / "g2c" / "r"), "0", "300"])
    c2 = child([str(work / "g2c" / "r"), "300", "600", str(work / "g2c" / "r" / "segments" / "0000")], cpu_only=True)
    report["gpu_checkpoint_continued_on_cpu"] = {"first": g2c["device"], "then": c2["device"], "ok": True}
    c1 = child([str(work / "c2g" / "r"), "0", "300"], cpu_only=True)
    g1 = child([str(work / "c2g" / "r"), "300", "600", str(work / "c2g" / "r" / "segments" / "0000")])
    report["cpu_checkpoint_continued_on_gpu"] = {"first": c1["device"], "then": g1["device"], "ok": True}

    # 2. the pipeline's own measurement on the GPU
    timings = {}
    for name, task, params in [
        ("digits_mlp", "examples/digits_mlp_torch.py", {}),
        ("digits_cnn", "examples/digits_cnn_torch.py", {"channels": 16}),
        ("mlp_4096", "examples/digits_mlp_torch.py", {"hidden": 4096}),
        ("mlp_65536", "examples/digits_mlp_torch.py", {"hidden": 65536}),
    ]:
        c = measure_costs(run_settings(task, params), work / "measure" / name)
        timings[name] = {k: c[k] for k in ("step_seconds", "save_seconds", "save_seconds_max", "load_seconds",
                                           "snapshot_seconds", "persist_seconds", "checkpoint_bytes")}
    report["measured_on_gpu"] = timings
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child_main(sys.argv[2:])
    else:
        print(json.dumps(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-out")), indent=2))
