"""Figures and tables for Snakemake's HTML report: training curves, checkpoint costs, timeline.

Everything is read from the run's declared outputs (plan.json, metrics.csv and each segment's
segment.json, which holds the history of its attempts), so the report rule has honest inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files, searchable, selectable
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

STATUS_COLORS = {"completed": "#2e7d32", "stopped": "#ef6c00", "killed": "#c62828", "running": "#9e9e9e"}


def load_run(plan_json: Path, metrics_csv: Path, segment_dirs: list[Path]) -> dict:
    plan = json.loads(Path(plan_json).read_text())
    metrics = pd.read_csv(metrics_csv)
    segments = [json.loads((Path(d) / "segment.json").read_text()) for d in segment_dirs]
    return {"plan": plan, "metrics": metrics, "segments": segments, "attempts": attempts_table(segments)}


def attempts_table(segments: list[dict]) -> pd.DataFrame:
    """One row per segment attempt: start, end, status, steps, and the work lost when it failed."""
    rows = []
    for seg in segments:
        records = seg.get("history", [])
        starts = [r for r in records if "resumed_from" in r]
        ends = {r["attempt"]: r for r in records if "status" in r}
        for i, start in enumerate(starts):
            end = ends.get(start["attempt"])
            nxt = starts[i + 1] if i + 1 < len(starts) else None
            if end is not None:
                status, end_time, end_step, reason = end["status"], end["end_time"], end["end_step"], end["reason"]
            else:  # killed: no end record; the next attempt knows what it lost
                status, reason = "killed", "killed (no chance to save)"
                end_time = nxt.get("lost_until_time", nxt["start_time"]) if nxt else start["start_time"]
                end_step = nxt["resumed_from"] + nxt.get("lost_steps", 0) if nxt else start["resumed_from"]
            lost = nxt.get("lost_steps", 0) if (nxt and status != "completed") else 0
            rows.append({
                "segment": seg["segment"]["index"], "attempt": start["attempt"], "status": status,
                "reason": reason, "start_time": start["start_time"], "end_time": end_time,
                "resumed_from": start["resumed_from"], "end_step": end_step,
                "restore_seconds": start.get("restore_seconds", float("nan")), "lost_steps": lost,
                "source": start["source"],
            })
    return pd.DataFrame(rows)


def _segment_lines(ax, plan):
    for seg in plan["segments"][1:]:
        ax.axvline(seg["start"], color="#90a4ae", linestyle="--", linewidth=0.8)


def plot_training(run: dict, out: Path, name: str) -> None:
    m = run["metrics"].dropna(subset=["loss"]).drop_duplicates("step", keep="last").sort_values("step")
    extra = [c for c in m.columns if c not in {"segment", "attempt", "step", "loss", "lr", "time", "save_seconds"}]
    panels = 2 + bool(extra)
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.6 * panels), sharex=True)
    ax = axes[0]
    ax.plot(m["step"], m["loss"], linewidth=1, color="#1565c0", label="loss")
    ax.set_yscale("log")
    ax.set_ylabel("training loss (log)")
    ax.set_title(f"{name}: training across {len(run['plan']['segments'])} segments")
    resumes = run["attempts"]
    resumes = resumes[resumes["attempt"] > 1] if len(resumes) else resumes
    for _, r in resumes.iterrows():
        ax.axvline(r["resumed_from"], color=STATUS_COLORS["killed"], linewidth=1.2, alpha=0.7)
    ax.plot([], [], color="#90a4ae", linestyle="--", label="segment boundary")
    ax.plot([], [], color=STATUS_COLORS["killed"], label="resume after a failure")
    ax.legend(loc="upper right", fontsize=8)
    if extra:
        for col in extra:
            axes[1].plot(m["step"], m[col], linewidth=1, label=col)
        axes[1].set_ylabel("task metrics")
        axes[1].legend(loc="lower right", fontsize=8)
    axes[-1].plot(m["step"], m["lr"], color="#6a1b9a", linewidth=1)
    axes[-1].set_ylabel("learning rate")
    axes[-1].set_xlabel("global step")
    for a in axes:
        _segment_lines(a, run["plan"])
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_checkpoints(run: dict, out: Path, name: str) -> None:
    m = run["metrics"]
    saves = m[m["save_seconds"].notna()].sort_values("time")
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.scatter(saves["step"], saves["save_seconds"] * 1000, s=8, color="#1565c0", label="save")
    loads = run["attempts"]
    if len(loads):
        loads = loads[loads["resumed_from"] > 0]
        ax.scatter(loads["resumed_from"], loads["restore_seconds"] * 1000, s=30, marker="^",
                   color="#ef6c00", label="load at a segment start or resume (incl. verify)")
    planned = run["plan"]["costs"]["save_seconds"] * 1000
    ax.axhline(planned, color="#455a64", linestyle=":", label=f"measured before planning ({planned:.3g} ms)")
    ax.set_xlabel("global step")
    ax.set_ylabel("duration (ms)")
    size = run["plan"]["costs"]["checkpoint_bytes"] / 1e6
    ax.set_title(f"{name}: checkpoint saves and loads (checkpoint size {size:.3g} MB)")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    if len(saves) and len(m):
        wall = (m["time"] - m["time"].min()).clip(lower=1e-9)
        cum = saves["save_seconds"].cumsum().values / wall.loc[saves.index].values * 100
        ax2.plot(saves["step"], cum, color="#2e7d32", linewidth=1.2, label="cumulative overhead (%)")
        ax2.axhline(run["plan"]["overhead"]["percent"], color="#2e7d32", linestyle="--", linewidth=0.8,
                    label="planned overhead (%)")
    ax2.set_ylabel("overhead (% of wall time)")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center", bbox_to_anchor=(0.5, -0.22),
              ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_timeline(run: dict, out: Path, name: str) -> None:
    a = run["attempts"]
    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.45 * max(1, len(run["plan"]["segments"]))))
    t0 = a["start_time"].min() if len(a) else 0
    span = (a["end_time"].max() - t0) if len(a) else 0
    unit, scale = ("min", 60) if span > 180 else ("s", 1)
    for _, r in a.iterrows():
        start, width = (r["start_time"] - t0) / scale, max((r["end_time"] - r["start_time"]) / scale, 1e-3)
        ax.barh(r["segment"], width, left=start, height=0.6, color=STATUS_COLORS[r["status"]], edgecolor="white")
        if r["status"] != "completed":
            ax.annotate(f"lost {int(r['lost_steps'])} steps", (start + width, r["segment"]), fontsize=7,
                        xytext=(2, 6), textcoords="offset points", color=STATUS_COLORS[r["status"]])
    handles = [Patch(color=STATUS_COLORS[s], label=s) for s in ("completed", "stopped", "killed")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="attempt")
    ax.set_yticks(range(len(run["plan"]["segments"])))
    ax.set_ylabel("segment")
    ax.set_xlabel(f"wall-clock time since the first segment started ({unit})")
    ax.set_title(f"{name}: segment attempts ({(a['attempt'] > 1).sum() if len(a) else 0} restarts)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plan_vs_measured(run: dict) -> pd.DataFrame:
    """Per segment: planned vs measured duration, saves, and overhead."""
    plan, m, a = run["plan"], run["metrics"], run["attempts"]
    costs = plan["costs"]
    rows = []
    for seg in plan["segments"]:
        steps = seg["end"] - seg["start"]
        predicted = (costs["startup_seconds"] + costs["load_seconds"] + steps * costs["step_seconds"]
                     + -(-steps // seg["interval"]) * costs["save_seconds"])
        mine = a[a["segment"] == seg["index"]] if len(a) else a
        seg_rows = m[m["segment"] == seg["index"]]
        save_total = seg_rows["save_seconds"].sum()
        wall = float((mine["end_time"] - mine["start_time"]).sum()) if len(mine) else float("nan")
        rows.append({
            "segment": seg["index"], "steps": f"{seg['start']}-{seg['end']}", "attempts": len(mine),
            "planned_s": round(predicted, 2), "measured_s": round(wall, 2),
            "saves": int(seg_rows["save_seconds"].notna().sum()), "save_s": round(save_total, 3),
            "planned_overhead_pct": round(plan["overhead"]["percent"], 2),
            "measured_overhead_pct": round(100 * save_total / wall, 2) if wall and wall == wall else float("nan"),
            "lost_steps": int(mine["lost_steps"].sum()) if len(mine) else 0,
        })
    return pd.DataFrame(rows)


def make_run_report(name, plan_json, metrics_csv, segment_dirs, training, checkpoints, timeline, table) -> None:
    run = load_run(plan_json, metrics_csv, segment_dirs)
    plot_training(run, training, name)
    plot_checkpoints(run, checkpoints, name)
    plot_timeline(run, timeline, name)
    plan_vs_measured(run).to_csv(table, index=False)


def compare_runs(names: list[str], metrics_csvs: list[Path], out: Path) -> None:
    """Loss of every run over global steps, in one figure."""
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for name, path in zip(names, metrics_csvs):
        m = pd.read_csv(path).dropna(subset=["loss"]).drop_duplicates("step", keep="last").sort_values("step")
        ax.plot(m["step"], m["loss"], linewidth=1, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("global step")
    ax.set_ylabel("training loss (log)")
    ax.set_title("All runs: training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
