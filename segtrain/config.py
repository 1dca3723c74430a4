"""Reading and checking the pipeline config before any job starts.

Every problem is reported with the key it concerns and how to fix it, all at once, so a user
fixes a config in one pass rather than one error per attempt.
"""

from __future__ import annotations

import copy
import difflib
import math
import time
from pathlib import Path

import yaml

from . import backends
from .definition import (
    KERAS_EQUIVALENT,
    REPO,
    TRAINING_DEFAULTS,
    definition_hash,
    find_task,
    model_definition,
    model_hash,
    task_functions,
)
from .durations import DurationError, parse_duration, parse_percent
from .planning import MAX_SEGMENTS
from .settings import RunSettings

# In the package, so that an installed segtrain resolves a config; workflow/schemas/ links to it
# (where Snakemake workflows keep their schemas).
SCHEMA = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The config cannot be used; the message lists each problem and its fix."""


def load_schema(path: Path = SCHEMA) -> dict:
    return yaml.safe_load(Path(path).read_text())


def _known_keys(schema: dict) -> tuple[set[str], set[str]]:
    settings = set(schema["$defs"]["settings"]["properties"])
    return settings, settings | set(schema["$defs"]["run"]["properties"])


def _format_schema_error(err, schema) -> str:
    where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
    if err.validator in ("additionalProperties", "unevaluatedProperties"):
        settings, run_keys = _known_keys(schema)
        path = list(err.absolute_path)
        if not path:
            known = set(schema["properties"])
        elif path == ["defaults"]:
            known = settings
        elif path[-1:] == ["checkpoint"] or (len(path) >= 1 and path[-1] == "checkpoint"):
            known = set(schema["$defs"]["settings"]["properties"]["checkpoint"]["properties"])
        else:
            known = run_keys
        extra = [k for k in err.instance if k not in known] if isinstance(err.instance, dict) else []
        msgs = []
        for key in extra:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
            msgs.append(f"{where}: unknown key '{key}'; {hint}")
        if msgs:
            return "\n".join(msgs)
    if err.validator == "type" and err.validator_value == "integer" and isinstance(err.instance, float):
        return f"{where}: {err.instance!r} is not a whole number; write {int(err.instance)!r}" if \
            err.instance.is_integer() else f"{where}: {err.instance!r} is not a whole number"
    if err.validator == "oneOf" and isinstance(err.instance, float):
        return f"{where}: {err.instance!r} is not a whole number (or 'auto')"
    if err.validator == "pattern" and where == "runs":
        return (f"runs: {err.instance!r} is not a run name: a run's name is a folder and a Snakemake wildcard; give "
                "1 to 100 letters, digits, '_', '.' or '-', starting with a letter or digit")
    if err.validator == "maximum" and where.endswith(".processes"):
        return (f"{where}: {err.instance} processes on one machine is more than any machine gives (at most "
                f"{err.validator_value}); for more, use nodes (SLURM) x processes")
    if where == "checkpoint_root":
        return (f"checkpoint_root: {err.instance!r} is not a folder; give the folder that holds each run's "
                "checkpoints (checkpoint_root: results, the default, or a path on the persistent volume)")
    if err.validator == "maximum" and where.endswith(".total_steps"):
        return (f"{where}: {err.instance:,} steps is implausible (more than {err.validator_value:,}); check it "
                "for a typo (10^6 is 1000000)")
    if err.validator == "required":
        return f"{where}: {err.message}; add it (see config/README.md)"
    if err.validator in ("minProperties", "maxProperties") and where.endswith("checkpoint"):
        return f"{where}: set exactly one of every, every_steps, every_epochs, max_overhead, mtbf"
    return f"{where}: {err.message}"


def _fill_defaults(schema_props: dict, data: dict) -> dict:
    out = dict(data)
    for key, spec in schema_props.items():
        if key not in out and "default" in spec:
            out[key] = copy.deepcopy(spec["default"])
    return out


MIN_TIME_LIMIT = 5.0  # seconds: below it no job starts an interpreter, trains a step and saves

# DSRI's booking server starts and ends bookings at 09:00 in Maastricht.
BOOKING_TIMEZONE = "Europe/Amsterdam"
BOOKING_HOUR = 9


def _dates_as_text(config: dict) -> dict:
    """YAML reads an unquoted 2026-12-04T09:00:00 as a datetime and 2026-12-03 as a date: the same
    text as a quoted string, so the schema and the checks below see one form."""
    import datetime as dt

    fixed = {k: v.isoformat() for k, v in config.items()
             if k in ("deadline", "booking_last_day") and isinstance(v, (dt.date, dt.datetime))}
    return {**config, **fixed} if fixed else config


def deadline_of(config: dict):
    """The absolute end of all training as an aware datetime, or None.

    From ``deadline`` (ISO 8601 with an offset, or naive with ``timezone`` set) or from
    ``booking_last_day`` (a DSRI booking ends at 09:00 Europe/Amsterdam the day after its last
    day). A naive time without ``timezone`` is refused: a pod (TZ=UTC) and a laptop in Maastricht
    would read 09:00 an hour apart.
    """
    import datetime as dt
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    config = _dates_as_text(config)
    text, last_day, zone_name = config.get("deadline"), config.get("booking_last_day"), config.get("timezone")
    zone = None
    if zone_name:
        try:
            zone = ZoneInfo(str(zone_name))
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"invalid config:\n  timezone: {zone_name!r} is not a time zone name; "
                              f"use one like '{BOOKING_TIMEZONE}' or 'UTC'") from None
    if text and last_day:
        raise ConfigError("invalid config:\n  deadline and booking_last_day are both set; keep one "
                          "(booking_last_day sets the deadline to 09:00 the day after it)")
    if last_day:
        try:
            day = dt.date.fromisoformat(str(last_day))
        except ValueError:
            raise ConfigError(f"invalid config:\n  booking_last_day: cannot read {last_day!r} as a date; "
                              "write the booking's last day like '2026-12-03'") from None
        when = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(BOOKING_HOUR),
                                   tzinfo=zone or ZoneInfo(BOOKING_TIMEZONE))
        what = f"booking_last_day: {last_day} (the booking ends {when.isoformat()})"
    elif text:
        try:
            when = dt.datetime.fromisoformat(str(text))
        except ValueError:
            raise ConfigError(
                f"invalid config:\n  deadline: cannot read {text!r} as a date and time; "
                "write it like '2026-12-04T09:00:00+01:00'") from None
        if when.tzinfo is None:
            if zone is None:
                raise ConfigError(
                    f"invalid config:\n  deadline: {text} has no time zone, so a pod (UTC) and a laptop "
                    "would read it hours apart. Add the offset ('2026-12-04T09:00:00+01:00') or name the "
                    f"zone with the key timezone (e.g. timezone: {BOOKING_TIMEZONE})")
            when = when.replace(tzinfo=zone)
        what = f"deadline: {text}"
    elif config.get("deadline_required"):
        raise ConfigError(
            "invalid config:\n  no deadline: this profile runs inside a booked GPU workspace, which DSRI "
            "stops at 09:00 after the booking's last day. Give that day: --config booking_last_day=2026-12-03 "
            "(or deadline='2026-12-04T09:00:00+01:00')")
    else:
        return None
    if when.timestamp() <= time.time():
        raise ConfigError(
            f"invalid config:\n  {what} has passed; no segment could train. Set the end of your next "
            "booking (booking_last_day: its last day, or deadline: '2026-12-04T09:00:00+01:00') or remove the key")
    return when


# Settings of the pipeline's own loop that a script does itself
SCRIPT_DOES_ITSELF = ("precision", "accumulate", "clip_grad_norm", "num_workers", "validation_split", "data_parallel")


def _processes_problems(run: dict, where: str, base: Path) -> list[str]:
    """Several processes per segment (``processes`` on each of ``nodes``): PyTorch, the
    pipeline's loop (a global batch that splits into equal shares of equal micro-batches) or a
    script's own loop (not a trainer's)."""
    processes, nodes = run.get("processes", 1), run.get("nodes", 1)
    world = processes * nodes
    sharded = run.get("data_parallel", "ddp") == "fsdp2"
    if world == 1:
        return [f"{where}.data_parallel: fsdp2 shards the model over several processes, and the run has one: "
                "set processes above 1, or remove the key"] if sharded and run["framework"] == "torch" else []
    if sharded and run.get("precision") == "fp16":
        return [f"{where}.precision: fp16 with data_parallel: fsdp2 needs a sharded grad scaler, which is not "
                "built yet: use bf16 (no scaler), or data_parallel: ddp"]
    if sharded and run.get("clip_grad_norm") is not None:
        return [f"{where}.clip_grad_norm: clipping sharded gradients (data_parallel: fsdp2) is not built yet: "
                "remove it, or use data_parallel: ddp"]
    key = "processes" if nodes == 1 else "nodes"
    count = f"{world} processes" if nodes == 1 else f"{world} processes ({nodes} nodes x {processes})"
    if run["framework"] != "torch":
        return [f"{where}.{key}: {count} train PyTorch runs so far; a Keras run trains in one process: "
                f"set {key}: 1"]
    if run.get("script") is not None:
        return []
    share = world * run.get("accumulate", 1)
    if run["batch_size"] % share:
        return [f"{where}.batch_size: {run['batch_size']} samples do not split into the equal shares of {count}"
                + (f" of {run['accumulate']} micro-batches" if run.get("accumulate", 1) > 1 else "")
                + f"; give a multiple of {share}"]
    return []


def _entry_problems(run: dict, where: str, base: Path, given: set) -> list[str]:
    """Check the run's way in (``task`` or ``script``); a script run gets ``task`` = the script's
    path (its sources are hashed and shipped like a task's) and ``script_args``."""
    import shlex

    script = run.pop("script", None)
    if script is None:
        if not run.get("task"):
            return [f"{where}: give task: (a task file; the pipeline runs the loop) or script: (your own "
                    "training script with segtrain.session()); see README, 'Bringing your training'"]
        if not run.get("total_steps"):
            return [f"{where}.total_steps: missing; give the run's training steps (only a script run may leave it "
                    "out, when its framework gives the length: segtrain.keras.fit's epochs, Lightning's max_epochs, "
                    "the Trainer's num_train_epochs)"]
        return []
    if run.get("task"):
        return [f"{where}: task and script are both set; keep one (script runs your own loop, task the pipeline's)"]
    try:
        words = shlex.split(script)
    except ValueError as exc:
        return [f"{where}.script: cannot split {script!r} into a file and its arguments ({exc})"]
    if not words:
        return [f"{where}.script: empty; give the training script's path, e.g. script: train.py --lr 0.1"]
    run["task"], run["script_args"] = words[0], words[1:]
    problems = []
    if find_task(words[0], base) is None:
        problems.append(f"{where}.script: file '{words[0]}' not found in {Path(base).resolve()} or {REPO}; "
                        "give a path relative to the working directory")
    for key in SCRIPT_DOES_ITSELF:
        if key in given and run[key] != TRAINING_DEFAULTS.get(key, 0):
            problems.append(f"{where}.{key}: a script run does this in its own loop; remove the key")
    run["validation_split"] = 0  # the script holds out its own validation data (seg.steps(evaluate=...))
    return problems


def resolve(config: dict, base: Path = Path("."), schema: dict | None = None) -> dict[str, RunSettings]:
    """Validate ``config`` and return each run's settings (defaults applied, durations in seconds,
    the model definition hashed).

    Raises ConfigError listing every problem found.
    """
    import jsonschema

    schema = schema or load_schema()
    config = _dates_as_text(config)
    # JSON Schema's integer takes 3.0; a job would then crash on it (range(3.0), np.random.seed)
    strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, x: isinstance(x, int) and not isinstance(x, bool))
    validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_format_schema_error(e, schema) for e in errors))

    deadline_of(config)  # refuses a naive, unreadable or past end before any job starts
    root = Path(base) / str(config.get("checkpoint_root", "results"))
    if root.exists() and not root.is_dir():
        raise ConfigError(f"invalid config:\n  checkpoint_root: {root} exists and is not a folder; give the folder "
                          "that holds each run's checkpoints (checkpoint_root: results, the default, or a path on "
                          "the persistent volume)")
    settings_props = schema["$defs"]["settings"]["properties"]
    run_props = schema["$defs"]["run"]["properties"]
    defaults = _fill_defaults(settings_props, config.get("defaults") or {})
    problems: list[str] = []
    runs: dict[str, dict] = {}
    for name, raw in config["runs"].items():
        run = _fill_defaults(run_props, {**defaults, **raw})
        where = f"runs.{name}"
        try:
            run["time_limit_seconds"] = parse_duration(run["time_limit"], f"{where}.time_limit")
            if run["time_limit_seconds"] <= 0:
                raise DurationError(f"{where}.time_limit: must be positive, got {run['time_limit']!r}")
            run["grace_period_seconds"] = parse_duration(run["grace_period"], f"{where}.grace_period")
            margin = run["safety_margin"]
            if isinstance(margin, str) and margin.strip().endswith("%"):
                pct = parse_percent(margin, f"{where}.safety_margin")
                run["margin_seconds"] = run["time_limit_seconds"] * pct / 100
            else:
                run["margin_seconds"] = parse_duration(margin, f"{where}.safety_margin")
            run["max_startup_percent"] = parse_percent(run["max_startup_share"], f"{where}.max_startup_share")
            policy = dict(run["checkpoint"])
            (kind, value), = policy.items()
            if kind == "every":
                policy = {"every_seconds": parse_duration(value, f"{where}.checkpoint.every")}
                if policy["every_seconds"] <= 0:
                    raise DurationError(f"{where}.checkpoint.every: must be positive")
            elif kind == "every_epochs":
                policy = {"every_epochs": float(value)}
            elif kind == "max_overhead":
                policy = {"max_overhead_percent": parse_percent(value, f"{where}.checkpoint.max_overhead")}
            elif kind == "mtbf":
                policy = {"mtbf_seconds": parse_duration(value, f"{where}.checkpoint.mtbf")}
                if policy["mtbf_seconds"] <= 0:
                    raise DurationError(f"{where}.checkpoint.mtbf: must be positive")
            run["policy"] = policy
            check = run.get("resume_check", "auto")  # YAML reads a bare `off` as false
            run["resume_check"] = "off" if check is False else "auto" if check is True else check
        except DurationError as exc:
            problems.append(str(exc))
        if run.get("time_limit_seconds", MIN_TIME_LIMIT) < MIN_TIME_LIMIT:
            problems.append(f"{where}.time_limit: {run['time_limit']!r} is shorter than any job can start, train "
                            f"and save in; give at least {MIN_TIME_LIMIT:g} s (a real limit: the walltime or booking)")
        elif run.get("margin_seconds", 0) >= run.get("time_limit_seconds", float("inf")):
            problems.append(f"{where}.safety_margin: leaves no time in a {run['time_limit']} job; lower it")

        per = run.get("steps_per_segment")
        if isinstance(per, int) and math.ceil(run.get("total_steps", 0) / per) > MAX_SEGMENTS:
            problems.append(f"{where}.total_steps: {run['total_steps']:,} steps in segments of {per} make "
                            f"{math.ceil(run['total_steps'] / per):,} jobs, more than {MAX_SEGMENTS:,}; check "
                            "total_steps for a typo, or raise steps_per_segment")
        problems += _processes_problems(run, where, base)
        if run["framework"] == "keras":
            for key, instead in KERAS_EQUIVALENT.items():
                if run.get(key, TRAINING_DEFAULTS[key]) != TRAINING_DEFAULTS[key]:
                    problems.append(f"{where}.{key}: applies to PyTorch runs; in a Keras task use {instead}")
        hint = backends.missing_package(run["framework"])
        if hint:
            problems.append(
                f"{where}.framework: '{run['framework']}' is not installed in this environment; {hint}"
            )
        problems += _entry_problems(run, where, base, set(config.get("defaults") or {}) | set(raw))
        task = find_task(run["task"], base) if run.get("task") else None
        if task is None and run.get("task") and "script_args" not in run:
            problems.append(
                f"{where}.task: file '{run['task']}' not found in {Path(base).resolve()} or {REPO}; "
                "give a path relative to the working directory"
            )
        elif task is not None and "script_args" not in run:
            try:
                defined = task_functions(task)
            except SyntaxError as exc:
                problems.append(f"{where}.task: '{run['task']}' is not valid Python: {exc}")
            except (UnicodeDecodeError, ValueError):
                problems.append(f"{where}.task: '{run['task']}' is not a Python source file (not UTF-8 text); "
                                "give the path of the .py file that defines the task")
            else:
                info = backends.BACKENDS[run["framework"]]
                missing = [f for f in info.required if f not in defined]
                if missing:
                    problems.append(
                        f"{where}.task: '{run['task']}' does not define {', '.join(missing)}; a "
                        f"{run['framework']} task needs {', '.join(info.required)} (see README, 'Bringing your "
                        "training'), or give your own training script as script: instead"
                    )
        run["name"] = name
        run["model_hash"] = model_hash(run)
        if task is not None and not any(p.startswith(f"{where}.task") for p in problems):
            try:
                run["model_definition"] = model_definition(run, task, base)
                run["definition_hash"] = definition_hash(run["model_definition"])
            except (SyntaxError, ValueError, OSError) as exc:
                problems.append(f"{where}.task: a module it imports cannot be read: {exc}")
        runs[name] = run
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return {name: RunSettings.from_dict(run) for name, run in runs.items()}
