"""The resume check on a CUDA device (not part of `make test`, which must pass without a GPU).

    python tests/gpu_resume_check.py OUT_DIR

Runs `python -m segtrain.check` (the measure job's check, alone) on the digits CNN (convolutions:
cuDNN; dropout: the CUDA random stream) with deterministic: true and with deterministic: false,
8 steps, restore at 4. Deterministic kernels must be measured bitwise; with deterministic: false a
divergence, if the kernels produce one, must be named as non-deterministic kernels (two straight
jobs differ), not as a resume fault. Prints each verdict with its time and the device, and writes
them to OUT_DIR/gpu_resume_check.json. On a machine without CUDA it runs on the CPU and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def main(out_dir: Path) -> int:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device here)"
    cnn = {"task": "examples/digits_cnn_torch.py", "total_steps": 400, "batch_size": 64,
           "params": {"channels": 32, "dropout": 0.3, "lr": 0.003, "lr_step": 100}}
    config = {"defaults": {"framework": "torch", "time_limit": "10m"},
              "runs": {"exact": {**cnn, "deterministic": True}, "fast": {**cnn, "deterministic": False}}}
    results = {"device": device}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "examples").symlink_to(REPO / "examples")
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "PYTHONPATH": str(REPO), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
        for name in ("exact", "fast"):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "segtrain.check", "--config", "config.yaml", "--run", name,
                                   "--steps", "8"], cwd=root, capture_output=True, text=True, env=env, timeout=900)
            seconds = time.perf_counter() - t
            line = done.stdout.splitlines()[0] if done.stdout else done.stderr[-2000:]
            results[name] = {"exit": done.returncode, "seconds": round(seconds, 1), "verdict": line}
            print(f"[{device}] deterministic: {name == 'exact'}: exit {done.returncode} in {seconds:.1f} s\n  {line}")
            if name == "exact" and done.returncode != 0:
                failed = True
            if name == "fast" and done.returncode == 3 and "non-deterministic" not in line:
                failed = True  # a divergence of non-deterministic kernels blamed on the resume
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_resume_check.json").write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "gpu-out")))
