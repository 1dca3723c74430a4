# Config loading and validation, and the input functions of the rules. The decisions they
# apply (a rerun over recorded checkpoints, another attempt, the deadline) are segtrain.admission's.
import json
import math
import os
import re
import sys
import time
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.settings import (
    DeploymentMethod,
    SharedFSUsage,
)

# The project's root (scripts/, segtrain/): two folders above this file, whether the workflow runs
# from the top-level Snakefile, from workflow/Snakefile, or as a module of another workflow.
PROJECT_ROOT = str(Path(workflow.current_basedir).parent.parent)
sys.path.insert(0, PROJECT_ROOT)
from segtrain.config import ConfigError, deadline_of, resolve
from segtrain.settings import DEFINITIONS_ENV, for_jobs
from segtrain.admission import (
    deadline_refusal,
    keep_earlier_log,
    measure_retry_refusal,
    rerun_refusal,
    retry_refusal_of,
)
from segtrain.layout import (
    CHECKPOINT_ROOT_ENV,
    DEFAULT_CHECKPOINT_ROOT,
    SEGMENT_SUMMARY,
    Files,
    RunPaths,
    run_root,
)
from segtrain.layout import checkpoint_folder as _checkpoint_folder

# Rules run `$SEGTRAIN_PYTHON $SEGTRAIN_SCRIPTS/<rule>.py`: this interpreter and this workflow's
# scripts, wherever the working directory is (inside the job image under apptainer, the image's
# interpreter: the Containerfile sets SEGTRAIN_IMAGE_PYTHON). They travel as environment
# variables, not params:
# the paths differ between a laptop, a cluster node and a container, and a params change would
# make Snakemake retrain finished segments. Cluster jobs parse this file again and set their own.
os.environ.update(
    SEGTRAIN_PYTHON=sys.executable,
    SEGTRAIN_SCRIPTS=str(Path(PROJECT_ROOT) / "scripts"),
    # the process whose jobs these are: a training job stops when it is gone (segtrain.lifecycle)
    SEGTRAIN_SNAKEMAKE_PID=str(os.getpid()),
)
SEGMENT_RETRY_CAP = 100
STARTED = time.time()  # this invocation's start: attempts before it are not its retries
EXPORT_EXT = {"torch": "pt", "keras": "keras"}

try:
    RUNS = resolve(config, base=Path.cwd())
    DEADLINE = deadline_of(config)
except ConfigError as exc:
    raise WorkflowError(str(exc)) from None
# Checked by the schema (a non-empty string) before it reaches the jobs' environment
CHECKPOINT_ROOT = config.get("checkpoint_root", DEFAULT_CHECKPOINT_ROOT)
os.environ[CHECKPOINT_ROOT_ENV] = CHECKPOINT_ROOT
if (
    DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
    and not config.get("container_image")
):
    raise WorkflowError(
        "--software-deployment-method apptainer runs every job in the job image, and none is set. "
        "Build it from the Containerfile, push it, and name it: "
        "--config container_image=docker://ghcr.io/<you>/segtrain:1.0 (or in your config file)."
    )
# An absolute end (a booking's), with its offset: an environment variable so changing it retrains
# nothing, and jobs in any time zone read the same instant.
os.environ.update(SEGTRAIN_DEADLINE=DEADLINE.isoformat() if DEADLINE else "")

# Jobs read each run's full model definition from the environment, not from params: a params
# change would make Snakemake retrain the finished segments of runs started by earlier versions.
os.environ[DEFINITIONS_ENV] = for_jobs(RUNS)


def checkpoint_folder(run):
    """Where a run's periodic checkpoints and attempts ledger live: the jobs' folder
    (segtrain.layout builds both)."""
    return _checkpoint_folder(run, CHECKPOINT_ROOT)


for _name, _run in RUNS.items():
    _refusal = rerun_refusal(_name, _run, checkpoint_folder(_name))
    if _refusal:
        raise WorkflowError(_refusal)


wildcard_constraints:
    run="|".join(map(re.escape, RUNS)) if RUNS else "x^",
    segment=r"\d\d\d\d+",


def _subset(run, keys):
    return json.dumps(RUNS[run].subset(keys), sort_keys=True)


# What defines the model and its training trajectory; changing any of it changes the model hash.
MODEL_KEYS = (
    "name",
    "framework",
    "task",
    "params",
    "seed",
    "batch_size",
    "validation_split",
    "model_hash",
)


def model_settings(wildcards):
    return _subset(wildcards.run, MODEL_KEYS)


def train_settings(wildcards):
    """A training job's settings: the model's, and the run's length from the plan when the config
    leaves total_steps out (the script's framework gave it to the measure job)."""
    if RUNS[wildcards.run].total_steps:
        return model_settings(wildcards)
    settings = RUNS[wildcards.run].subset(MODEL_KEYS)
    settings["total_steps"] = load_plan(wildcards.run)["total_steps"]
    return json.dumps(settings, sort_keys=True)


def several_processes(run):
    """("processes",) for a run of several processes (and "nodes" on several nodes): a change of
    their number measures and plans again (absent for one, so runs of earlier versions keep their
    params)."""
    settings = RUNS[run]
    processes = ("processes",) if settings.processes > 1 else ()
    return processes + (("nodes",) if settings.nodes > 1 else ())


def several_nodes(wildcards):
    """A run's nodes when it trains on several (SLURM's nodes and tasks: one torchrun per node),
    None otherwise (the resource stays unset)."""
    nodes = RUNS[wildcards.run].nodes
    return nodes if nodes > 1 else None


def started_by_srun(wildcards):
    """The launcher for a run on several nodes (srun): the job's command runs on the first node
    and starts the others itself (snakemake-executor-plugin-slurm then runs it without its own
    srun -n1); None for one node."""
    return "srun" if RUNS[wildcards.run].nodes > 1 else None


def executor_name():
    """The executor this Snakemake process runs jobs with (local, slurm, slurm-jobstep, ...)."""
    plugin = getattr(workflow, "executor_plugin", None)
    name = getattr(plugin, "cli_prefix", None) or getattr(plugin, "name", None)
    return name or "local"


def check_nodes_executor():
    """Refuse before any job a run on several nodes that this executor cannot give them."""
    several = sorted(name for name, run in RUNS.items() if run.nodes > 1)
    executor = executor_name()
    if several and executor not in ("slurm", "slurm-jobstep") and not workflow.dryrun:
        raise WorkflowError(
            f"run {several[0]}: nodes: {RUNS[several[0]].nodes} trains each segment on that many nodes of a SLURM "
            f"job, and this Snakemake runs its jobs with the {executor} executor: run with --profile "
            "profiles/slurm, or set nodes: 1 (processes: N trains with N processes on one machine)"
        )


def check_processes_fit():
    """Refuse before any job a run whose processes this machine cannot give (local executor:
    each process needs a core of its own; the measure job would start them all at once).
    """
    if executor_name() != "local" or workflow.dryrun:
        return
    cores = os.cpu_count() or 1
    for name, run in sorted(RUNS.items()):
        if run.processes > cores:
            raise WorkflowError(
                f"run {name}: processes: {run.processes}, and this machine has {cores} CPU cores (the "
                f"local executor runs every process here): set processes: {cores} or fewer, or run "
                "with a cluster profile whose nodes have more"
            )


def measure_settings(wildcards):
    return _subset(
        wildcards.run,
        MODEL_KEYS
        + ("threads", "keep", "measure_steps", "measure_saves")
        + several_processes(wildcards.run),
    )


def plan_settings(wildcards):
    keys = (
        "name",
        "model_hash",
        "total_steps",
        "time_limit_seconds",
        "margin_seconds",
        "policy",
        "grace_period_seconds",
        "max_startup_percent",
    )
    extra = ("steps_per_segment", "keep", "log_every", "eval_every", "monitor", "mode")
    return _subset(wildcards.run, keys + extra + several_processes(wildcards.run))


# in results/<run>/: what the run's plan must be made from
PLAN_SETTINGS = ".plan-settings.json"


def plan_settings_record(wildcards):
    """The plan's settings as a file beside it, rewritten (newer) only when they change: the
    plan is made again by their file's time, where Snakemake has no record of the params it
    was made with (a copy of results/ without .snakemake/, a new clone on the cluster), which
    would otherwise say "Nothing to be done" over a run whose config asks for more steps. Not
    with a storage provider (the plan lives in storage there, and Snakemake's record with it).
    """
    if workflow.storage_settings.default_storage_provider:
        return []
    path = Path(run_root(wildcards.run)) / PLAN_SETTINGS
    text = plan_settings(wildcards)
    try:
        same = path.read_text() == text
    except OSError:
        same = False
    if not same:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return [str(path)]


def runtime_minutes(wildcards, attempt):
    """The job's runtime resource, from the same time_limit the plan uses.

    Snakemake evaluates it again before every retry, so this is also where a retry is refused:
    a segment that stopped at its deadline after making progress always gets another attempt
    (train_segment's retries are a high cap), but the same error at the same step twice, or
    attempts in a row without progress, stop the run here with the reason. --retries 0 (the
    user's "never retry") is honoured: Snakemake's retries only say whether to retry at all.
    """
    if attempt > 1:
        run, index = wildcards.run, int(wildcards.segment)
        if not workflow.execution_settings.retries:
            raise WorkflowError(
                f"run {run}: segment {index} failed and retries are 0 (--retries 0), so it is "
                "not tried again; run the same command to resume it"
            )
        plan = load_plan(run)
        why = None
        # a new attempt must start up, restore and save before the deadline
        if DEADLINE is not None:
            why = deadline_refusal(
                run,
                index,
                plan.get("costs", {}),
                DEADLINE.isoformat(),
                DEADLINE.timestamp() - time.time(),
            )
        why = why or retry_refusal_of(
            run,
            index,
            attempt,
            checkpoint_folder(run),
            plan["segments"][index]["end"],
            STARTED,
        )
        if why:
            raise WorkflowError(why)
    # Snakemake removes a job's log before it runs the job again
    if not workflow.dryrun:
        log = f"logs/train_segment/{wildcards.run}/{wildcards.segment}.log"
        keep_earlier_log(Path(log))
    return max(1, math.ceil(RUNS[wildcards.run].time_limit_seconds / 60))


def measure_slot(wildcards, attempt):
    """One of the profile's measure_slots. Evaluated before every attempt: an earlier log is
    kept (Snakemake removes it before the next attempt), and a failure that recurs (a refusal,
    an error in the script) is not tried again."""
    if attempt > 1:
        results = Path(run_root(wildcards.run))
        why = measure_retry_refusal(wildcards.run, results, STARTED)
        if why:
            raise WorkflowError(why)
    if not workflow.dryrun:
        keep_earlier_log(Path(f"logs/measure_checkpoint_cost/{wildcards.run}.log"))
    return 1


_plan_cache = {}
_plan_output = {}


def load_plan(run):
    """The run's plan; raises Snakemake's IncompleteCheckpointException until it exists.

    Once the checkpoint is complete it stays complete for this process, so its output is looked
    up once per run (input functions call this for every segment job: 10,000s of times).
    """
    plan = _plan_output.get(run)
    if plan is None:
        plan = _plan_output[run] = checkpoints.plan_segments.get(run=run).output.plan
    # With a storage provider (Kubernetes) the plan lives in storage: open() fetches a local copy.
    local = Path(plan.storage_object.local_path()) if plan.is_storage else Path(plan)
    key = (str(local), local.stat().st_mtime_ns) if local.exists() else None
    if key is None or key not in _plan_cache:
        with plan.open() as fh:
            data = json.load(fh)
        key = (str(local), local.stat().st_mtime_ns)
        _plan_cache[key] = data
    return _plan_cache[key]


def segment_dir(run, index):
    return str(RunPaths(run_root(run)).segment_dir(index))


def previous_segment(wildcards):
    """Segment i starts from segment i-1's output; segment 0 from a seeded fresh model."""
    plan = load_plan(wildcards.run)
    i = int(wildcards.segment)
    if i >= len(plan["segments"]):
        raise WorkflowError(
            f"run {wildcards.run} has {len(plan['segments'])} segments in its plan, not {i + 1}"
        )
    return [segment_dir(wildcards.run, i - 1)] if i > 0 else []


def segment_settings(wildcards):
    """The segment's entry in the plan. Segments already trained keep their entry on re-planning,
    so finished segments never see their params change."""
    return json.dumps(
        load_plan(wildcards.run)["segments"][int(wildcards.segment)], sort_keys=True
    )


def all_segments(wildcards):
    """Every segment's output folder, in chain order.

    Every rule that needs the chain lists all of it in ascending order, so Snakemake reaches
    segment i's job after segment i-1's and finds its dependency already in the DAG: building
    the DAG never recurses down the chain, whatever its length (10,000 segments and more).
    """
    return segment_chain(wildcards.run)


def segment_chain(run):
    return [segment_dir(run, s["index"]) for s in load_plan(run)["segments"]]


def segment_count(wildcards, input):
    """How many segments a rule's input lists. Scripts get the first folder and this count, not
    10,000 paths: one argument may not exceed 128 KiB. (With a storage provider the folders are
    local copies side by side, so the first one's parent holds them all.)"""
    return len(input.segments)


def runs_of(framework):
    """A wildcard pattern matching the names of the runs that use ``framework``."""
    names = [re.escape(n) for n, r in RUNS.items() if r.framework == framework]
    return "|".join(names) if names else "(?!x)x"


def get_model_targets(wildcards):
    """Per run: the plan and the exported models (last and best), without the figures."""
    targets = []
    for name, run in RUNS.items():
        ext = EXPORT_EXT[run.framework]
        targets += [
            Files.of(Files.plan_txt, run=name),
            Files.of(Files.model, run=name, ext=ext),
            Files.of(Files.model_best, run=name, ext=ext),
        ]
    return targets


def get_final_targets(wildcards):
    """Per run: the plan, the exported models, the merged metrics and the report's figures.
    (Each of them lists the whole chain of segments, in order, once the plan exists.)"""
    targets = []
    for name, run in RUNS.items():
        ext = EXPORT_EXT[run.framework]
        targets += [
            Files.of(Files.plan_txt, run=name),
            Files.of(Files.model, run=name, ext=ext),
            Files.of(Files.model_best, run=name, ext=ext),
            Files.of(Files.metrics, run=name),
            Files.of(Files.report, run=name, name="training.svg"),
            Files.of(Files.report, run=name, name="plan.html"),
        ]
    return targets + [Files.compare]


def deploys_sources():
    """Whether jobs get the workflow through Snakemake's source archive (no shared file system)."""
    remote = getattr(workflow, "remote_execution_settings", None)
    return bool(
        remote is not None
        and remote.job_deploy_sources
        and SharedFSUsage.SOURCES not in workflow.storage_settings.shared_fs_usage
    )


def check_sources_shipped():
    """Refuse before any job is created when the source archive lacks a file the jobs run."""
    if not deploys_sources():
        return
    from segtrain.shipping import missing_from_archive, needed_by_jobs, refusal

    needed = needed_by_jobs(RUNS, Path(PROJECT_ROOT), Path.cwd())
    missing = missing_from_archive(workflow.dag.get_sources(), needed)
    if missing:
        try:
            workflow.cleanup_source_archive()
        except Exception:  # the refusal matters more than the leftover archive
            pass
        raise WorkflowError(refusal(missing, Path.cwd()))
