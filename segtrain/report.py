"""Figures and tables for Snakemake's HTML report: training curves, checkpoint costs, timeline.

Everything is read from the run's declared outputs (plan.json, metrics.csv and each segment's
segment.json, which holds the history of its attempts), so the report rule has honest inputs.
"""

from __future__ import annotations

import html
import json
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller files, searchable, selectable
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .attempts import attempts_of  # noqa: E402
from .layout import SEGMENT_SUMMARY  # noqa: E402
from .planning import Costs, segment_seconds  # noqa: E402

STATUS_COLORS = {"completed": "#2e7d32", "stopped": "#ef6c00", "killed": "#c62828", "error": "#6a1b9a",
                 "running": "#9e9e9e"}
STARTUP_COLOR = "#b0bec5"
VAL_COLORS = {"val_loss": "#ef6c00"}


def load_run(plan_json: Path, metrics_csv: Path, segment_dirs: list[Path]) -> dict:
    plan = json.loads(Path(plan_json).read_text())
    metrics = pd.read_csv(metrics_csv)
    segments = [json.loads((Path(d) / SEGMENT_SUMMARY).read_text()) for d in segment_dirs]
    return {"plan": plan, "metrics": metrics, "segments": segments, "attempts": attempts_table(segments)}


def attempts_table(segments: list[dict]) -> pd.DataFrame:
    """One row per segment attempt: start, end, status, steps, and the work lost when it failed."""
    rows = []
    for seg in segments:
        attempts = attempts_of(seg.get("history", []))
        for i, a in enumerate(attempts):
            nxt = attempts[i + 1] if i + 1 < len(attempts) else None
            status = a["status"]
            if status == "killed":  # no end record; the next attempt knows what it lost
                end_time = nxt.get("lost_until_time", nxt["start_time"]) if nxt else a["start_time"]
                end_step = nxt["resumed_from"] + nxt.get("lost_steps", 0) if nxt else a["resumed_from"]
            else:
                end_time, end_step = a["end_time"], a["end_step"]
            lost = nxt.get("lost_steps", 0) if (nxt and status != "completed") else 0
            rows.append({
                "segment": seg["segment"]["index"], "attempt": a["attempt"], "status": status,
                "reason": a.get("reason", ""), "process_start_time": a.get("process_start_time", a["start_time"]),
                "start_time": a["start_time"], "train_start_time": a.get("train_start_time", a["start_time"]),
                "end_time": end_time, "resumed_from": a["resumed_from"], "end_step": end_step,
                "restore_seconds": a.get("restore_seconds", float("nan")), "lost_steps": lost,
                "source": a["source"], "train_seconds": a.get("train_seconds", float("nan")),
                "save_seconds": a.get("save_seconds", float("nan")),
            })
    return pd.DataFrame(rows)


def _resumes(attempts: pd.DataFrame) -> list[tuple[int, str]]:
    """(step, why) of every resume after an attempt that did not complete: 'stop' when the
    attempt stopped itself and saved (deadline, signal), 'failure' when it was killed or failed."""
    out = []
    if not len(attempts):
        return out
    for (_, prev), (_, cur) in zip(attempts.iloc[:-1].iterrows(), attempts.iloc[1:].iterrows()):
        if cur["segment"] == prev["segment"]:
            out.append((int(cur["resumed_from"]), "stop" if prev["status"] == "stopped" else "failure"))
    return out


def _segment_lines(ax, plan):
    for seg in plan["segments"][1:]:
        ax.axvline(seg["start"], color="#90a4ae", linestyle="--", linewidth=0.8)


def _best(run: dict) -> dict | None:
    return next((seg.get("best") for seg in reversed(run["segments"]) if seg.get("best")), None)


def _logged(frame, col: str):
    """The rows of ``frame`` that logged ``col``, with the column (empty when nothing logged it:
    a script that never calls seg.log, a trainer whose own logging never fired)."""
    if col not in frame:
        return frame.iloc[0:0].assign(**{col: pd.Series(dtype=float)})
    return frame.dropna(subset=[col])


def _missing_note(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} was logged", transform=ax.transAxes, ha="center", va="center",
            color="#b71c1c", fontsize=9)


def plot_training(run: dict, out: Path, name: str) -> None:
    """Loss (training and validation), task metrics (training and validation) and the learning
    rate over global steps; segment boundaries, resumes and the best checkpoint marked."""
    metrics = run["metrics"].drop_duplicates("step", keep="last").sort_values("step")
    m = _logged(metrics, "loss")
    skip = {"segment", "attempt", "step", "loss", "lr", "time", "save_seconds", "val_loss"}
    task = [c for c in metrics.columns if c not in skip and not c.startswith("val_")]
    val_task = [c for c in metrics.columns if c.startswith("val_") and c != "val_loss"]
    panels = 2 + bool(task or val_task)
    fig, axes = plt.subplots(panels, 1, figsize=(9, 2.8 * panels), sharex=True)
    ax = axes[0]
    ax.plot(m["step"], m["loss"], linewidth=1, color="#1565c0", label="training loss")
    if m.empty:
        _missing_note(ax, "training loss (a script logs it with seg.log(loss=...))")
    if "val_loss" in metrics:
        v = metrics.dropna(subset=["val_loss"])  # evaluated at checkpoints only: points, joined
        ax.plot(v["step"], v["val_loss"], color=VAL_COLORS["val_loss"], marker="o", markersize=3, linewidth=1.2,
                label="validation loss")
    if not m.empty or "val_loss" in metrics:
        ax.set_yscale("log")
    ax.set_ylabel("loss (log)")
    ax.set_title(f"{name}: training across {len(run['plan']['segments'])} segments")
    lines = {"stop": ("#ef6c00", "resume after a stop (deadline or signal, saved)"),
             "failure": (STATUS_COLORS["killed"], "resume after a failure (killed or error)")}
    seen = set()
    for step, why in _resumes(run["attempts"]):
        for a in axes:
            a.axvline(step, color=lines[why][0], linewidth=1.2, alpha=0.7)
        seen.add(why)
    best = _best(run)
    if best is not None:
        target = axes[0] if best["monitor"] in ("loss", "val_loss") else axes[1] if len(axes) > 2 else axes[0]
        for a in axes:
            a.axvline(best["step"], color="#2e7d32", linewidth=1, linestyle=":")
        target.plot([best["step"]], [best["value"]], marker="*", markersize=14, color="#2e7d32", linestyle="none",
                    label=f"best {best['monitor']} {best['value']:.4g} (step {best['step']}, exported)")
    ax.plot([], [], color="#90a4ae", linestyle="--", label="segment boundary")
    for why in sorted(seen):
        ax.plot([], [], color=lines[why][0], label=lines[why][1])
    ax.legend(loc="upper right", fontsize=7)
    if task or val_task:
        for col in task:
            t = _logged(metrics, col)
            axes[1].plot(t["step"], t[col], linewidth=1, label=f"training {col}")
        for col in val_task:
            v = metrics.dropna(subset=[col])
            axes[1].plot(v["step"], v[col], marker="o", markersize=3, linewidth=1.2, label=f"validation {col[4:]}")
        axes[1].set_ylabel("task metrics")
        axes[1].legend(loc="lower right", fontsize=7)
    rates = _logged(metrics, "lr")
    axes[-1].plot(rates["step"], rates["lr"], color="#6a1b9a", linewidth=1)
    if rates.empty:
        _missing_note(axes[-1], "learning rate")
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
    background = bool(run["plan"].get("async_save"))
    ax.scatter(saves["step"], saves["save_seconds"] * 1000, s=8, color="#1565c0",
               label="save: training blocked" if background else "save")
    writes = [s for seg in run["segments"] for s in seg.get("saves", [])
              if s.get("persist_seconds") is not None and s["persist_seconds"] != s["blocking_seconds"]]
    if writes:
        ax.scatter([w["step"] for w in writes], [w["persist_seconds"] * 1000 for w in writes], s=8, marker="x",
                   color="#8e24aa", label="its background write (persist)")
    loads = run["attempts"]
    if len(loads):
        loads = loads[loads["resumed_from"] > 0]
        ax.scatter(loads["resumed_from"], loads["restore_seconds"] * 1000, s=30, marker="^",
                   color="#ef6c00", label="load at a segment start or resume (incl. verify)")
    planned = (run["plan"]["blocking_seconds"] if background else run["plan"]["costs"]["save_seconds"]) * 1000
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
    """One bar per attempt on the wall clock: its start-up (interpreter, framework, task, restore)
    in grey, then its training coloured by how it ended; failed attempts say what they lost."""
    a = run["attempts"]
    n = max(1, len(run["plan"]["segments"]))
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.42 * min(n, 60)))
    t0 = a["process_start_time"].min() if len(a) else 0
    span = (a["end_time"].max() - t0) if len(a) else 0
    unit, scale = ("min", 60) if span > 180 else ("s", 1)
    for _, r in a.iterrows():
        begin = (r["process_start_time"] - t0) / scale
        train = (r["train_start_time"] - t0) / scale
        end = max((r["end_time"] - t0) / scale, train + 1e-3)
        ax.barh(r["segment"], train - begin, left=begin, height=0.6, color=STARTUP_COLOR, edgecolor="white")
        ax.barh(r["segment"], end - train, left=train, height=0.6, color=STATUS_COLORS[r["status"]],
                edgecolor="white")
        if r["status"] != "completed":
            ax.annotate(f"{r['status']}: lost {int(r['lost_steps'])} steps", (end, r["segment"]), fontsize=7,
                        xytext=(3, -3), textcoords="offset points", color=STATUS_COLORS[r["status"]],
                        annotation_clip=False)
    handles = [Patch(color=STARTUP_COLOR, label="start-up + restore")]
    handles += [Patch(color=STATUS_COLORS[s], label=s) for s in ("completed", "stopped", "killed", "error")]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, title="attempt")
    if len(a):
        ax.set_xlim(0, span / scale * 1.15)  # room for the labels of the last attempts
    ax.set_yticks(range(0, n, max(1, n // 30)))
    ax.set_ylabel("segment")
    ax.set_xlabel(f"wall-clock time since the first job started ({unit})")
    startup = (a["train_start_time"] - a["process_start_time"]).sum() if len(a) else 0.0
    total = (a["end_time"] - a["process_start_time"]).sum() if len(a) else 0.0
    share = f", start-up {100 * startup / total:.0f} % of the jobs' time" if total > 0 else ""
    ax.set_title(f"{name}: segment attempts ({(a['attempt'] > 1).sum() if len(a) else 0} restarts{share})")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plan_vs_measured(run: dict) -> pd.DataFrame:
    """Per segment: planned vs measured job time, start-up, saves and overhead."""
    plan, m, a = run["plan"], run["metrics"], run["attempts"]
    costs = Costs.from_dict(plan["costs"])
    last_save = 0.0
    if plan.get("async_save"):  # periodic saves block for the copy; a job's last save is written in full
        last_save = costs.save_seconds - plan["blocking_seconds"]
        costs = replace(costs, save_seconds=plan["blocking_seconds"])
    persist = {}
    for summary in run["segments"]:
        persist[summary["segment"]["index"]] = sum(s.get("persist_seconds") or 0 for s in summary.get("saves", []))
    rows = []
    for seg in plan["segments"]:
        steps = seg["end"] - seg["start"]
        predicted = segment_seconds(steps, seg["interval"], costs, seg.get("eval_every", 0)) + last_save
        mine = a[a["segment"] == seg["index"]] if len(a) else a
        seg_rows = m[m["segment"] == seg["index"]]
        save_total = seg_rows["save_seconds"].sum()
        wall = float((mine["end_time"] - mine["process_start_time"]).sum()) if len(mine) else float("nan")
        startup = float((mine["train_start_time"] - mine["process_start_time"]).sum()) if len(mine) else float("nan")
        train = float(mine["train_seconds"].sum()) if len(mine) else float("nan")
        rows.append({
            "segment": seg["index"], "steps": f"{seg['start']}-{seg['end']}", "attempts": len(mine),
            "planned_s": round(predicted, 2), "measured_s": round(wall, 2),
            "planned_startup_s": round(costs.startup_seconds + (costs.load_seconds if seg["start"] else 0), 2),
            "measured_startup_s": round(startup, 2),
            "saves": int(seg_rows["save_seconds"].notna().sum()), "save_s": round(save_total, 3),
            "persist_s": round(persist.get(seg["index"], float("nan")), 3),  # the last attempt's writes
            "planned_overhead_pct": round(100 * (1 - steps * costs.step_seconds / predicted), 1),
            "measured_overhead_pct": round(100 * (1 - train / wall), 1) if wall and wall == wall else float("nan"),
            "lost_steps": int(mine["lost_steps"].sum()) if len(mine) else 0,
        })
    return pd.DataFrame(rows)


def definition_edits(segments: list[dict]) -> list[dict]:
    """The accepted edits of the run's code (``continue_edited``), in order, once each, from the
    attempts that resumed across one."""
    seen, edits = set(), []
    for seg in segments:
        for record in seg.get("history", []):
            edit = record.get("edited")
            if isinstance(edit, dict) and (edit.get("step"), edit.get("to")) not in seen:
                seen.add((edit.get("step"), edit.get("to")))
                edits.append(edit)
    return edits


def plan_page(name: str, plan_txt: str, table: pd.DataFrame, attempts: pd.DataFrame, edits=()) -> str:
    """The plan as an HTML page, shown inline by Snakemake's report (text files are download-only)."""
    edited = "".join(f"<li>definition changed at step {int(e['step'])}: {html.escape(str(e.get('where', '')))} "
                     f"({html.escape(str(e.get('from', '')))} &rarr; {html.escape(str(e.get('to', '')))})</li>"
                     for e in edits)
    edited = (f"<h3>Definition changes</h3><ul>{edited}</ul><p>The run went on with edited code "
              "(continue_edited): from the first of these steps on it is not bitwise identical to an uninterrupted "
              "run of either version.</p>") if edited else ""
    stops = attempts[attempts["status"] != "completed"] if len(attempts) else attempts
    stop_rows = "".join(
        f"<tr><td>{int(r['segment'])}</td><td>{int(r['attempt'])}</td><td>{html.escape(r['status'])}</td>"
        f"<td>{int(r['end_step'])}</td><td>{html.escape(str(r['reason']))}</td></tr>" for _, r in stops.iterrows())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Plan of {html.escape(name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
pre {{ background: #f5f5f5; padding: 0.8em; font-size: 13px; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: right; }}
</style></head><body>
<h2>Plan of run {html.escape(name)}</h2>
{edited}
<pre>{html.escape(plan_txt)}</pre>
<h3>Planned versus measured, per segment (all attempts together)</h3>
{table.to_html(index=False, border=0)}
<h3>Attempts that did not complete</h3>
{"<table><tr><th>segment</th><th>attempt</th><th>status</th><th>at step</th><th>reason</th></tr>"
 + stop_rows + "</table>" if stop_rows else "<p>none: every segment completed in its first attempt</p>"}
</body></html>
"""


def make_run_report(name, plan_json, metrics_csv, segment_dirs, training, checkpoints, timeline, table,
                    page=None, plan_txt=None) -> None:
    run = load_run(plan_json, metrics_csv, segment_dirs)
    plot_training(run, training, name)
    plot_checkpoints(run, checkpoints, name)
    plot_timeline(run, timeline, name)
    rows = plan_vs_measured(run)
    rows.to_csv(table, index=False)
    if page is not None:
        text = Path(plan_txt).read_text() if plan_txt else ""
        Path(page).write_text(plan_page(name, text, rows, run["attempts"], definition_edits(run["segments"])))


def compare_runs(names: list[str], metrics_csvs: list[Path], out: Path) -> None:
    """Training and validation loss of every run over global steps, and the validation metrics
    the runs share, in one figure."""
    frames = {name: pd.read_csv(path).drop_duplicates("step", keep="last").sort_values("step")
              for name, path in zip(names, metrics_csvs)}
    shared = sorted(set.intersection(*[{c for c in f.columns if c.startswith("val_") and c != "val_loss"}
                                       for f in frames.values()])) if frames else []
    fig, axes = plt.subplots(1 + bool(shared), 1, figsize=(9, 3.8 * (1 + bool(shared))), sharex=True, squeeze=False)
    ax = axes[0][0]
    for i, (name, m) in enumerate(frames.items()):
        color = f"C{i}"
        t = _logged(m, "loss")
        ax.plot(t["step"], t["loss"], linewidth=1, color=color, alpha=0.6,
                label=f"{name} training" if not t.empty else f"{name}: no training loss logged")
        if "val_loss" in m:
            v = m.dropna(subset=["val_loss"])
            ax.plot(v["step"], v["val_loss"], color=color, marker="o", markersize=3, linewidth=1.2,
                    label=f"{name} validation")
        if shared:
            for col in shared:
                v = m.dropna(subset=[col])
                axes[1][0].plot(v["step"], v[col], color=color, marker="o", markersize=3, linewidth=1.2,
                                label=f"{name} {col}")
    ax.set_yscale("log")
    ax.set_ylabel("loss (log)")
    ax.set_title("All runs: training loss (thin) and validation loss (points)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    if shared:
        axes[1][0].set_ylabel("validation metrics")
        axes[1][0].legend(fontsize=7)
        axes[1][0].grid(alpha=0.3)
    axes[-1][0].set_xlabel("global step")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
