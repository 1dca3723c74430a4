"""Chaos harness: run a pipeline while killing its training processes at random moments.

A killer thread waits for a seeded step (one in each stretch of the run) and a random moment
after it, then sends SIGKILL or SIGTERM to whichever train_segment process holds the run's store
lock; some kills land inside saves. Snakemake's retries restart the killed segments. Periodic
saves are written in the background (async_save: true), so kills also land in writes while
training goes on. Afterwards the harness reports the kills survived, how many hit a save, the
work lost per kill (steps between the last step logged before the kill and the step resumed
from), and whether the final weights equal an uninterrupted run's. Seeded, so failures reproduce.

    python tests/chaos.py [--kills 20] [--seed 7]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segtrain.layout import RunPaths

from conftest import MLP, Project, final_state, load_weights, model_file  # noqa: E402

RUN = "chaos"
INTERVAL = 10


def _train_pid(store: Path) -> int | None:
    """The pid of the live train_segment process holding the store's lock, if any."""
    try:
        pid = int((store / ".lock").read_text().split()[1])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError, ValueError):
        return None
    return pid if b"train_segment.py" in cmdline else None


def _saved_step(store: Path) -> int:
    """The newest step with a checkpoint folder (cheap to poll: names only)."""
    steps = [int(e.name.split("-")[1]) for e in os.scandir(store) if e.name.startswith("step-")]
    return max(steps, default=0)


def _wait_for_save_in_flight(store: Path, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if any(e.name.startswith(".tmp-step-") for e in os.scandir(store)):
            return
        time.sleep(0.0005)


def _last_logged_step(store: Path) -> int:
    """The furthest step the run is known to have reached: logged, or saved (a kill can land
    between a save and the metrics row of its step)."""
    steps = [0] + [int(p.name.split("-")[1]) for p in store.glob("step-*")]
    for f in (store / "metrics").glob("segment-*.csv"):
        with open(f, newline="") as fh:
            steps += [int(r["step"]) for r in csv.DictReader(fh) if r.get("step", "").isdigit()]
    return max(steps)


def run_chaos(root: Path, kills: int = 20, seed: int = 7) -> dict:
    # a wide layer makes saves (about 4 MB with Adam's state) long enough for kills to land in them
    spec = {**MLP, "params": {"hidden": 4096, "lr": 0.05}, "total_steps": 8000, "steps_per_segment": 2000}
    # periodic saves are written in the background: kills land in those writes, while training goes on
    settings = dict(checkpoint={"every_steps": INTERVAL}, log_every=1, keep=2, measure_steps=5, measure_saves=2,
                    async_save=True)

    ref = Project(root / "ref")
    ref.write_config({RUN: spec}, **settings)
    ref.snakemake()

    p = Project(root / "chaos")
    p.write_config({RUN: spec}, **settings)
    store = p.paths(RUN).store
    rng = np.random.default_rng(seed)
    log: list[dict] = []
    done = threading.Event()

    # the kills are aimed at seeded steps, one in each of `kills` equal stretches of the run, so the
    # number of kills does not depend on how fast this machine trains (random times ran out of run
    # on a fast machine); a random wait after the target step puts each kill at a random moment
    stretch = (spec["total_steps"] - 100) // kills
    targets = [50 + i * stretch + int(rng.integers(0, stretch)) for i in range(kills)]

    def killer():
        while targets:
            target, pid = targets[0], None
            while not done.is_set():
                pid = _train_pid(store)
                if pid is not None and _saved_step(store) >= target:
                    time.sleep(rng.uniform(0.0, 0.3))
                    if _train_pid(store) == pid:
                        break  # still that attempt, training: kill it now
                time.sleep(0.01)
            if done.is_set():
                return
            sig = signal.SIGKILL if rng.random() < 0.6 else signal.SIGTERM
            if sig == signal.SIGKILL and rng.random() < 0.5:
                _wait_for_save_in_flight(store, timeout=1.0)  # aim this one at a save
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue  # it ended on its own just now: aim at the next attempt
            if sig == signal.SIGKILL:
                # SIGKILL is instant: what is on disk now is exactly what the kill left behind
                mid_save = any(e.name.startswith(".tmp-step-") for e in store.iterdir())
            else:
                mid_save = None  # SIGTERM: the process saves and exits at its next step boundary
            while Path(f"/proc/{pid}").exists():
                time.sleep(0.01)
            log.append({"signal": sig.name, "at_step": _last_logged_step(store), "mid_save": mid_save,
                        "time": time.time()})
            targets.pop(0)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = p.snakemake("--retries", str(kills + 5), check=False, timeout=1500)
    done.set()
    thread.join(timeout=5)
    if result.returncode != 0:
        raise AssertionError(f"the pipeline did not survive:\n{result.stderr[-6000:]}")

    attempts = [json.loads(line) for line in (store / RunPaths.ATTEMPTS).read_text().splitlines()]
    starts = [a for a in attempts if "resumed_from" in a]
    # each kill is followed by the next attempt's start; the work lost is the steps trained again
    total = spec["total_steps"]
    for kill in log:
        nxt = next((a for a in starts if a["start_time"] > kill["time"]), None)
        if nxt is None and kill["at_step"] >= total:
            # the kill hit the last segment after it had finished its work: nothing to redo
            kill["resumed_from"], kill["lost_steps"] = total, 0
            continue
        kill["resumed_from"] = nxt["resumed_from"] if nxt else None
        kill["lost_steps"] = kill["at_step"] - nxt["resumed_from"] if nxt else None
    corrupted = [s for a in starts for s in a.get("skipped", [])]
    identical = True
    try:
        from conftest import assert_bitwise_equal

        assert_bitwise_equal(load_weights(model_file(ref, RUN)), load_weights(model_file(p, RUN)))
        assert_bitwise_equal(final_state(ref, RUN), final_state(p, RUN))
    except AssertionError:
        identical = False
    return {"kills": log, "corrupted": corrupted, "identical": identical, "interval": INTERVAL,
            "attempts": len(starts)}


def report(result: dict) -> str:
    kills = result["kills"]
    lost = [k["lost_steps"] for k in kills if k["lost_steps"] is not None]
    lines = [
        f"kills survived: {len(kills)} ({sum(k['signal'] == 'SIGKILL' for k in kills)} SIGKILL, "
        f"{sum(k['signal'] == 'SIGTERM' for k in kills)} SIGTERM), {sum(bool(k['mid_save']) for k in kills)} "
        f"SIGKILLs landed inside a save",
        f"segment attempts: {result['attempts']}; checkpoints found damaged at resume: {len(result['corrupted'])}",
        f"work lost per kill (steps; interval {result['interval']}): max {max(lost, default=0)}, "
        f"mean {sum(lost) / max(len(lost), 1):.1f}; after SIGTERM: "
        f"{[k['lost_steps'] for k in kills if k['signal'] == 'SIGTERM']}",
        f"final weights and state bitwise identical to the uninterrupted run: {result['identical']}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(report(run_chaos(Path(tmp), args.kills, args.seed)))
