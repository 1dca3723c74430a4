"""One function per workflow rule; the scripts in scripts/ call these and nothing else."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from . import planning
from . import store as store_mod
from .layout import SEGMENT_BEST, SEGMENT_METRICS, SEGMENT_STATE, SEGMENT_SUMMARY, Files, RunPaths
from .plan_text import plan_table
from .runner import Stopped, run_segment
from .settings import RunSettings

log = logging.getLogger(__name__)


def setup_logging(log_file: str | None = None) -> None:
    handlers = [logging.StreamHandler()]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    from .launch import rank_label

    label = rank_label()  # several processes: the main one tells the story, the others only warn
    logging.basicConfig(level=logging.WARNING if label and not label.startswith("rank 0:") else logging.INFO,
                        format=f"%(asctime)s %(levelname)s {label}%(name)s: %(message)s", handlers=handlers, force=True)


def add_segments_args(parser) -> None:
    """The run's segment folders, given as the first one and their count (see segment_count in
    the rules: 10,000 paths do not fit in one command-line argument)."""
    parser.add_argument("--first-segment", required=True, help="the first segment's output folder")
    parser.add_argument("--count", type=int, required=True, help="how many segments the run has")


def segment_dirs(args) -> list[Path]:
    first = Path(args.first_segment)
    paths = RunPaths.of_segment(first)
    return [paths.segment_dir(int(first.name) + i) for i in range(args.count)]


def measure(run: RunSettings, output: Path) -> dict:
    """Measure the run's costs into ``output``; a failure that would recur is recorded beside it,
    so that Snakemake does not try the job again (``admission.measure_retry_refusal``)."""
    from .admission import forget_measure_failure, record_measure_failure

    try:
        costs = _measure(run, output)
    except BaseException as exc:
        record_measure_failure(Path(output).parent, exc)
        raise
    forget_measure_failure(Path(output).parent)
    return costs


def _measure(run: RunSettings, output: Path) -> dict:
    from .measure import measure_costs

    store_root = RunPaths(Path(output).parent).store
    check_world(run)
    if run.is_script:  # the user's script, in measure mode: it ends after the timed steps and saves
        from .script import measure_script
        from .world import current

        measure_script(run, store_root, Path(output))
        current().barrier()  # several processes: the main one wrote the costs
        return json.loads(Path(output).read_text())
    costs = measure_costs(run, store_root)
    from .world import current

    world = current()
    if world.is_main:  # several processes: each measured its share; rank 0's numbers are the job's
        store_mod.write_json_atomic(Path(output), {**costs, "processes": world.world_size})
    world.barrier()
    return costs


def check_resume(run: RunSettings, costs_file: Path, job_log: Path) -> int:
    """The measure job's resume check (``segtrain.check``): its verdict goes into the costs."""
    from .check import CheckFailed, check_costs_file, policy

    if not run.total_steps:  # a script's framework gave the length to the measure job
        run = run.replace(total_steps=run_length(run, json.loads(Path(costs_file).read_text()))[0])
    try:
        verdict = check_costs_file(run, costs_file, job_log)
    except CheckFailed as exc:
        log.error("%s", exc)
        return 1
    if verdict is not None:
        (log.info if verdict["bitwise"] else log.warning)("%s (%.1f s, %d jobs; resume_check: %s)", verdict["text"],
                                                          verdict["seconds"], verdict["jobs"], policy(run))
    return 0


def frozen_segments(run_root: Path) -> list[planning.Segment]:
    """Segments already trained (their output is complete), as a contiguous prefix from 0."""
    done = []
    paths = RunPaths(Path(run_root))
    while True:
        summary = paths.segment_summary(len(done))
        if not summary.exists():
            break
        seg = planning.Segment(**json.loads(summary.read_text())["segment"])
        if seg.start != (done[-1].end if done else 0):
            break
        done.append(seg)
    return done


def how_to_validate(run: RunSettings, measured: dict) -> str:
    """How a run of this way in adds validation data, in its own terms."""
    loader = measured.get("data_loader", "segtrain")
    if loader == "Lightning's":
        return "give trainer.fit a val_dataloader whose validation_step logs it (self.log('val_loss', ...))"
    if loader == "the Trainer's":
        return "give the Trainer an eval_dataset and eval_strategy (it then logs eval_loss: monitor: eval_loss)"
    if run.is_script and run.framework == "keras":
        return "give segtrain.keras.fit validation_data=(x_val, y_val) or validation_split=0.1"
    if run.is_script:
        return "give seg.steps an evaluate function returning {'val_loss': ...}: seg.steps(loader, evaluate=evaluate)"
    return "set validation_split (e.g. 0.1) in the run's config, or give the task a build_validation function"


def notice(run: RunSettings, text: str) -> None:
    """A notice for the person who runs the workflow: in the log, and on the job's standard output
    (Snakemake's terminal, for a local run)."""
    log.warning("%s", text)
    print(f"segtrain: run {run.name}: {text}", flush=True)


def check_monitor(run: RunSettings, measured: dict) -> None:
    """The monitor must be a metric the measured jobs logged (known only once a step and an
    evaluation ran, so checked here, before any training job)."""
    import difflib

    names = measured.get("metric_names")
    trainer = measured.get("evaluates")
    if names and trainer and run.monitor not in names:
        notice(run, f"monitor {run.monitor}: {trainer} evaluates on its own schedule and has not computed it yet "
                    f"(it computed: {', '.join(sorted(names))}); the best checkpoint is judged by {run.monitor} "
                    "whenever it does, and the last model is exported as the best if it never does. Without "
                    "validation so far: " + how_to_validate(run, measured))
        return
    if names and run.monitor.startswith("val_") and not any(n.startswith("val_") for n in names):
        notice(run, f"monitor {run.monitor}: the run has no validation, so the last checkpoint is exported as the "
                    f"best. To validate: {how_to_validate(run, measured)}")
        return
    if names and run.monitor not in names:
        close = difflib.get_close_matches(run.monitor, names, n=1)
        raise planning.PlanError(
            f"monitor: this run logs no metric '{run.monitor}'"
            + (f"; did you mean '{close[0]}'?" if close else "")
            + f" It logs: {', '.join(n for n in names if n != 'lr')}"
        )


def run_length(run: RunSettings, measured: dict) -> tuple[int, str]:
    """The run's total steps, and a line for the plan when the script's framework gave them (the
    config leaves total_steps out)."""
    if run.total_steps:
        return run.total_steps, ""
    if measured.get("total_steps"):
        return int(measured["total_steps"]), (f"run length: {measured['total_steps']} steps, from the script "
                                              f"({measured.get('total_steps_from', 'its framework')}); the config "
                                              "leaves total_steps out")
    raise planning.PlanError(
        f"run {run.name}: the config leaves total_steps out, and the script gives no length of its own: set "
        "total_steps in the config (a script's framework gives it with segtrain.keras.fit's epochs, Lightning's "
        "max_epochs or the Trainer's num_train_epochs)")


def plan(run: RunSettings, costs_file: Path, plan_json: Path, plan_txt: Path) -> planning.Plan:
    measured = json.loads(Path(costs_file).read_text())
    check_monitor(run, measured)
    costs = planning.Costs.from_dict(measured)
    per = run.steps_per_segment
    total, length_line = run_length(run, measured)
    result = planning.make_plan(
        total_steps=total,
        time_limit=run.time_limit_seconds,
        costs=costs,
        policy=planning.Policy(**run.policy),
        margin_seconds=run.margin_seconds,
        steps_per_segment=None if per == "auto" else int(per),
        frozen=frozen_segments(Path(plan_json).parent),
        keep=run.keep,
        log_every=run.log_every,
        grace_seconds=run.grace_period_seconds,
        eval_every=0 if run.eval_every == "auto" else int(run.eval_every),
        monitor=run.monitor,
        mode=run.mode,
        max_startup_percent=run.max_startup_percent,
        async_save=run.async_save,
    )
    data = result.to_dict()
    data["run"] = run.name
    data["model_hash"] = run.model_hash
    recorded = store_mod.recorded_manifest(RunPaths(Path(plan_json).parent).store)
    exact, training = training_lines(run, measured,
                                     written_by=int(recorded.get("world_size", 1)) if recorded else None)
    exact, training = measured_exactness(run, measured, exact, training)
    data["bitwise_resume"] = exact
    data["resume_check"] = measured.get("resume_check")
    store_mod.write_json_atomic(Path(plan_json), data)
    training = ([length_line] if length_line else []) + training
    table = plan_table(result, run.name).rstrip("\n") + "\n\n" + "\n".join(training) + "\n"
    Path(plan_txt).write_text(table)
    log.info("\n%s", table)
    return result


def measured_exactness(run: RunSettings, measured: dict, exact, lines: list[str]) -> tuple[bool | None, list[str]]:
    """The plan's resume line is the measure job's resume check (``segtrain.check``), not a guess
    from the way in: the verdict, or 'not checked'. A resume by another number of processes
    (``reshard_line``) stays. Refuses a divergence where ``resume_check`` says so."""
    from .check import policy, verdict_line

    verdict = measured.get("resume_check")
    resharded = any("(allow_reshard)" in line for line in lines)
    kept = [line for line in lines if not line.startswith("  resume:") or "(allow_reshard)" in line]
    if verdict is None:
        if policy(run) != "off":  # costs measured before the check existed: the plan says what it knows
            return exact, lines
        return (False if resharded else None), kept + [verdict_line(None)]
    if not verdict["bitwise"] and policy(run) == "refuse":
        raise planning.PlanError(
            f"run '{run.name}': {verdict['text']}.\nNo training job starts (resume_check: refuse). Fix the code and "
            f"measure and check it again: snakemake ... --forcerun {Files.of(Files.costs, run=run.name)}; or set "
            "resume_check: warn in the run's config to train knowing that a resume is not bitwise identical")
    kept.append(verdict_line(verdict, run))
    # Snakemake's output gets it too (a job's standard output reaches it)
    if verdict["bitwise"]:
        print(f"segtrain: run '{run.name}': {verdict['text']}", flush=True)
    else:
        tell_user(f"run '{run.name}': {verdict['text']}; it trains anyway (resume_check: {policy(run)})")
    if verdict["bitwise"] and run.deterministic is not True and not run.is_script:
        kept.append(f"  (deterministic: {str(run.deterministic).lower()}: the kernels may round differently on "
                    "another device or input; the check measured on this machine's kernels)")
    return (verdict["bitwise"] and not resharded), kept


# What a resume through a trainer's callback keeps, as this project's tests found it
TRAINER_EXACTNESS = {
    "the Trainer's": "bitwise identical in this project's tests (1 and 2 processes, SIGTERM and kills): the "
                     "Trainer restores its RNG states and skips the batches it has seen; it needs the Trainer's "
                     "full_determinism=True (deterministic kernels), and a data collator or dataset that draws "
                     "random numbers only from the Trainer's streams",
    "Lightning's": "NOT bitwise identical: the data position after a resume is Lightning's own (a plain "
                   "DataLoader starts its epoch again on a mid-epoch resume); give the training data to "
                   "seg.dataloader(dataset, batch_size) for a bitwise resume (tested)",
}


def reshard_line(written_by: int, processes: int, same_samples: bool = True) -> str:
    samples = ("every step trains the same samples, but the gradients are summed in another order" if same_samples
               else "the batches are not seg.dataloader's, so each process's batch is the script's or its trainer's "
                    "own: with another number of processes a step trains another number of samples, unless the "
                    "script sizes its per-process batch by the number of processes")
    return (f"  resume: NOT bitwise identical: the checkpoints were written by {written_by} process(es) and resume "
            f"with {processes} (allow_reshard): {samples}")


def training_lines(run: RunSettings, measured: dict | None = None, written_by: int | None = None) -> tuple[bool, list[str]]:
    """How each step is computed, and whether a resume is bitwise identical: for the plan.
    ``written_by``: the number of processes that wrote the run's newest checkpoint, if any."""
    deterministic = run.deterministic
    if run.is_script:
        loader = (measured or {}).get("data_loader", "segtrain")
        lines = ["Training", f"  the script's own loop ({' '.join([run.task, *run.script_args])})"]
        iterable = (measured or {}).get("data_iterable", "")
        if loader == "the script's own" and iterable == "DataLoader":
            lines.append("  resume: NOT bitwise identical: the script's own DataLoader starts its epoch again at its "
                         "beginning on a resume; give its dataset to seg.dataloader(dataset, batch_size) for an "
                         "exact data position")
        elif loader == "the script's own":
            lines.append(f"  resume: NOT known to be bitwise identical: seg.steps() draws the batches from the "
                         f"script's own {iterable or 'iterable'}, which segtrain cannot position: a resume starts it "
                         "again at its beginning, which gives the same batches only when they depend on nothing but "
                         "the restored random streams; seg.dataloader(dataset, batch_size) gives an exact data "
                         "position")
        elif loader in TRAINER_EXACTNESS:
            lines.append("  resume: at the exact step; " + TRAINER_EXACTNESS[loader])
        elif loader != "segtrain":
            lines.append(f"  resume: at the exact step, NOT bitwise identical: the data position after a resume is "
                         f"{loader} own")
        elif deterministic is not True:
            lines.append(f"  resume: NOT bitwise identical (deterministic: {str(deterministic).lower()})")
        else:
            lines.append("  resume: bitwise identical to an uninterrupted run (the pipeline's seeded data order, "
                         "deterministic kernels, every tracked state and random stream checkpointed)")
        if written_by is not None and written_by != run.world_size:
            if lines[-1].startswith("  resume: bitwise identical"):
                lines.pop()
            lines.append(reshard_line(written_by, run.world_size, same_samples=loader == "segtrain"))
            return False, lines
        return deterministic is True and loader == "segtrain", lines
    accumulate, clip, batch = run.accumulate, run.clip_grad_norm, run.batch_size
    lines = ["Training",
             f"  precision {run.precision}, {accumulate} micro-batch(es) of {batch} per step"
             f" ({accumulate * batch} samples), "
             + (f"gradients clipped to norm {clip:g}" if clip else "no gradient clipping")]
    processes = run.world_size
    if processes > 1:
        how = "torchrun, " + ("FSDP2: the model sharded" if run.data_parallel == "fsdp2" else "DDP")
        how = how if run.nodes == 1 else f"{run.nodes} nodes x {run.processes}: srun, {how}"
        lines.append(f"  {processes} processes per segment ({how}): each trains {batch // processes} of the "
                     f"{batch} samples of a step; the costs above were measured with {processes} processes; a "
                     "resume needs the same number of processes")
    if written_by is not None and written_by != processes:
        lines.append(reshard_line(written_by, processes))
        return False, lines
    if deterministic is True:
        lines.append("  resume: bitwise identical to an uninterrupted run (deterministic kernels only)")
    else:
        lines.append(f"  resume: NOT bitwise identical (deterministic: {str(deterministic).lower()}): a resume "
                     "continues from the exact saved state, but the kernels may round differently afterwards")
    return deterministic is True, lines


def exit_now(code: int, exit_handlers: bool = False) -> None:
    """Flush the logs and the standard streams, then end the process without the interpreter's
    teardown (the job's files are complete and its store unlocked when this is called).
    ``exit_handlers``: run the ``atexit`` handlers first (a user's script registered them)."""
    if exit_handlers:
        import atexit

        atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def train(run: RunSettings, segment: dict, previous: str | None, output: Path, threads: int) -> int:
    """Train one segment; returns the process exit code (0, or runner.EXIT_STOPPED)."""
    from .runner import EXIT_STOPPED

    paths = RunPaths.of_segment(output)
    seg = planning.Segment(**segment)
    defined, processes = run.threads, run.processes
    if defined * processes != threads:  # Snakemake gives a job fewer threads when it has fewer cores
        log.warning("this job was given %d threads; training uses the run's %d%s, which its results depend on",
                    threads, defined, f" in each of {processes} processes" if processes > 1 else "")
    run = run.replace(keep=seg.keep, log_every=seg.log_every)
    previous_state = Path(previous) / SEGMENT_STATE if previous else None
    check_world(run)
    if run.world_size > 1:
        tell_where(run)
    warn_inexact(run, paths)
    try:
        if run.is_script:
            from .script import train_script

            train_script(run, seg, paths, previous_state, Path(output))
        else:
            run_segment(run, seg, paths, previous_state, Path(output))
    except Stopped as exc:
        log.warning("%s", exc)
        return EXIT_STOPPED
    return 0


def warn_inexact(run: RunSettings, paths: RunPaths) -> None:
    """Every training job of a run whose resume check diverged (resume_check: warn) says so."""
    from .check import policy

    try:
        verdict = json.loads(paths.plan.read_text()).get("resume_check")
    except (OSError, ValueError):
        return
    if verdict and not verdict.get("bitwise", True):
        log.warning("%s; this run trains anyway (resume_check: %s)", verdict["text"], policy(run))


def check_world(run: RunSettings) -> None:
    """The processes that train are the run's: a job started some other way (by hand, with a
    launcher's variables set) must not train another trajectory silently."""
    from .world import SeveralProcesses, current

    world = current()
    if world.world_size != run.world_size:
        raise SeveralProcesses(f"this job runs as {world.world_size} process(es) and the run asks for {run.world_size} "
                               f"(processes: {run.processes}, nodes: {run.nodes}): start it through Snakemake, which "
                               "launches the run's processes")


def tell_where(run: RunSettings) -> None:
    """Log where the processes of the segment run: each rank's host and node (torchrun's GROUP_RANK)."""
    import socket

    from .world import current

    world = current()
    places = world.all_gather((socket.gethostname(), os.environ.get("GROUP_RANK", "0")))
    if world.is_main:
        log.info("%d processes on %d node(s): %s", world.world_size, run.nodes,
                 ", ".join(f"rank {r} on {host} (node {node})" for r, (host, node) in enumerate(places)))


def export_model(run: RunSettings, segment_dir: Path, outputs: dict[str, Path]) -> None:
    """Export the last and the best checkpoint of a run in the framework's usual forms.

    ``outputs`` maps ``last.<ext>``/``best.<ext>`` to paths, for every ext the backend writes.
    """
    from .backends import load_backend

    backend = load_backend(run.framework)
    for which in ("last", "best"):
        folder = Path(segment_dir) / SEGMENT_STATE if which == "last" else best_folder(run, Path(segment_dir))
        try:
            store_mod.verify(folder)
        except store_mod.CorruptCheckpoint as exc:
            raise store_mod.CorruptCheckpoint(
                f"run {run.name}: the final state is damaged ({exc}); nothing was exported. Train the last "
                f"segment again from the newest checkpoint that verifies: snakemake --forcerun {Path(segment_dir)}"
            ) from None
        out = {ext: Path(outputs[f"{which}.{ext}"]) for ext in backend.EXPORTS}
        if run.is_script and run.framework == "keras":  # only the script knows how to build its model
            from .script import export_script

            export_script(run, folder, out)
        else:
            backend.export(run, folder, out)
        log.info("exported the %s checkpoint (%s)", which, folder)


def tell_user(text: str) -> None:
    """A notice for the person running the workflow: a job's standard output reaches Snakemake's
    output (its standard error goes to the job's log), and the log gets it too."""
    log.warning("%s", text)
    print(f"segtrain: {text}", flush=True)


def best_folder(run: RunSettings, last_segment: Path) -> Path:
    """The best checkpoint to export: the last segment's, else (damaged) the best that verifies
    among the earlier segments' and the run's best store, newest first; else the last state,
    with a notice in Snakemake's output when something had been evaluated."""
    last_segment = Path(last_segment)
    recorded = None
    summary = last_segment / SEGMENT_SUMMARY
    if summary.exists():
        recorded = json.loads(summary.read_text()).get("best")
    candidates = [last_segment / SEGMENT_BEST]
    earlier = [f for f in last_segment.parent.glob(f"[0-9]*/{SEGMENT_BEST}") if f.parent.name.isdigit()
               and int(f.parent.name) < int(last_segment.name)] if last_segment.name.isdigit() else []
    candidates += sorted(earlier, key=lambda f: int(f.parent.name), reverse=True)
    best_store = store_mod.CheckpointStore(RunPaths.of_segment(last_segment).best_store)
    candidates += [best_store.path(step) for step in reversed(best_store.steps())]
    damaged = []
    for folder in candidates:
        if not folder.exists():
            continue
        try:
            manifest = store_mod.verify(folder)
        except store_mod.CorruptCheckpoint as exc:
            damaged.append(str(exc))
            continue
        if damaged:
            found = manifest.get("best") or {}
            tell_user(f"run {run.name}: the best checkpoint is damaged ({damaged[0]}); exporting the best one "
                      f"that verifies instead: {found.get('monitor', '?')} {found.get('value', '?')} at step "
                      f"{manifest.get('step')} ({folder})")
        return folder
    if recorded or damaged:
        tell_user(f"run {run.name}: no best checkpoint verifies ({'; '.join(damaged) or 'none was kept'}); "
                  "model.best.* is the LAST model, not the best")
    else:
        log.warning("no best checkpoint (nothing was evaluated); exporting the last one as best")
    return last_segment / SEGMENT_STATE


def merge_metrics(segment_dirs: list[Path], out: Path) -> None:
    """Concatenate every segment's metrics, in segment order."""
    import pandas as pd

    merged = pd.concat([pd.read_csv(Path(d) / SEGMENT_METRICS) for d in segment_dirs], ignore_index=True)
    merged.to_csv(out, index=False)
    log.info("merged %d metrics rows from %d segments into %s", len(merged), len(segment_dirs), out)
