"""Reading and checking the pipeline config before any job starts.

Every problem is reported with the key it concerns and how to fix it, all at once, so a user
fixes a config in one pass rather than one error per attempt.
"""

from __future__ import annotations

import ast
import copy
import difflib
import hashlib
import json
import math
import os
import time
from pathlib import Path

import yaml

from . import backends
from .durations import DurationError, parse_duration, parse_percent
from .planning import MAX_SEGMENTS

SCHEMA = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"


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


REPO = Path(__file__).resolve().parent.parent


def find_task(task: str, base: Path = Path(".")) -> Path | None:
    """The task file: relative to ``base`` (the working directory) first, then to the workflow."""
    for root in (Path(base), REPO):
        candidate = root / task
        if candidate.is_file():
            return candidate
    return None


def task_functions(path: Path) -> set[str]:
    """Names a task file binds at top level (def, assignment, import), read without running it."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


MIN_TIME_LIMIT = 5.0  # seconds: below it no job starts an interpreter, trains a step and saves

CONTEXT_FUNCTIONS = ("build_model", "build_optimizer", "build_scheduler")
DEFINITIONS_ENV = "SEGTRAIN_DEFINITIONS"


def uses_run_context(path: Path) -> bool:
    """Whether one of the task's build functions takes the run context (a parameter ``run``)."""
    tree = ast.parse(Path(path).read_bytes(), filename=str(path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in CONTEXT_FUNCTIONS:
            args = node.args
            if any(a.arg == "run" for a in args.posonlyargs + args.args + args.kwonlyargs):
                return True
    return False


def task_sources(path: Path, base: Path = Path(".")) -> dict[str, str]:
    """sha256 of the task file and of every project module it imports, recursively: a module
    that resolves to a .py file next to the task or in the working directory. Installed
    packages are not followed (their version is the environment's business)."""
    found: dict[str, str] = {}
    roots = [Path(path).resolve().parent, Path(base).resolve()]

    def resolve_module(name: str, here: Path) -> Path | None:
        rel = Path(*name.split("."))
        if not name or name.split(".")[0] == "segtrain":
            return None  # this tool's own package: upgrading it does not change a model
        for root in [here, *roots]:
            for candidate in (root / rel.with_suffix(".py"), root / rel / "__init__.py"):
                if candidate.is_file():
                    return candidate
        return None

    def visit(file: Path):
        file = file.resolve()
        try:
            key = str(file.relative_to(Path(base).resolve()))
        except ValueError:
            key = str(file)
        if key in found:
            return
        data = file.read_bytes()
        found[key] = hashlib.sha256(data).hexdigest()
        tree = ast.parse(data, filename=str(file))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                wanted = [(a.name, file.parent) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                wanted = [(node.module, file.parent)]
            elif isinstance(node, ast.ImportFrom):  # relative: from . import x, from .x import y
                here = file.parent
                for _ in range(node.level - 1):
                    here = here.parent
                wanted = [(node.module, here)] if node.module else [(a.name, here) for a in node.names]
            else:
                continue
            for name, here in wanted:
                parts = (name or "").split(".")
                for depth in range(1, len(parts) + 1):  # a.b.c imports packages a and a.b first
                    target = resolve_module(".".join(parts[:depth]), here)
                    if target is not None:
                        visit(target)

    visit(Path(path))
    return found


# Settings of the pipeline's PyTorch loop; Keras tasks set their equivalents on the optimizer.
TRAINING_DEFAULTS = {"precision": "fp32", "accumulate": 1, "clip_grad_norm": None, "deterministic": True,
                     "num_workers": 0}
KERAS_EQUIVALENT = {
    "num_workers": "arrays (Keras tasks give arrays; loader workers are for PyTorch Datasets)",
    "precision": "keras.mixed_precision.set_global_policy('mixed_bfloat16') in build_model",
    "accumulate": "the optimizer's gradient_accumulation_steps",
    "clip_grad_norm": "the optimizer's global_clipnorm",
}


def model_definition(run: dict, task_path: Path, base: Path = Path(".")) -> dict:
    """Everything that defines the model and its trajectory: a resume must find the same.

    Beyond the config keys: the content of the task file and of the project modules it imports
    (a function body edited in place changes the model), ``threads`` (a different thread count
    changes floating-point sums), and ``total_steps`` when the task reads the run context (its
    schedule was built for that many steps)."""
    definition = {k: run[k] for k in ("framework", "task", "params", "batch_size", "seed", "threads")}
    definition["validation_split"] = run.get("validation_split", 0)
    # How a step is computed; recorded only when not the default, so runs started by versions
    # without these settings keep their definition (and their checkpoints)
    for key, default in TRAINING_DEFAULTS.items():
        if key != "num_workers" and run.get(key, default) != default:
            definition[key] = run[key]
    # Loader workers seed each item's random streams from (seed, step, position): the same for any
    # number of workers, but not the streams items draw from without workers
    if run.get("num_workers", 0) > 0:
        definition["item_seeding"] = "per-item"
    if "script_args" in run:  # a script run: the script is run with these arguments
        definition["entry"] = "script"
        definition["script_args"] = run["script_args"]
    definition["sources"] = task_sources(task_path, base)
    if uses_run_context(task_path):
        definition["total_steps"] = run["total_steps"]
    return definition


def definitions_for_jobs(runs: dict[str, dict]) -> str:
    """Each run's resolved settings, as JSON for the environment (DEFINITIONS_ENV): every job
    reads all of them from there, so every setting the config accepts reaches the job that uses
    it (num_workers, async_save, grace_period, ...). A rule's params hold only the keys whose
    change must rerun it: params must not change for runs started by earlier versions, or
    Snakemake would retrain them."""
    return json.dumps({name: run for name, run in runs.items()}, sort_keys=True, default=str)


def with_definition(run: dict) -> dict:
    """``run`` (a job's params) with the run's resolved settings from the environment (its
    model definition included); the params win where both have a key."""
    entry = json.loads(os.environ.get(DEFINITIONS_ENV) or "{}").get(run.get("name"), {})
    return {**entry, **run}


def definition_hash(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


def definition_changes(recorded: dict, now: dict) -> list[str]:
    """What differs between two model definitions, for people."""
    changes = []
    for key in sorted(set(recorded) | set(now)):
        if key == "sources":
            old, new = recorded.get(key, {}), now.get(key, {})
            for f in sorted(set(old) | set(new)):
                if old.get(f) != new.get(f):
                    what = "added" if f not in old else "no longer imported" if f not in new else "content changed"
                    changes.append(f"{f} ({what})")
        elif recorded.get(key) != now.get(key):
            changes.append(f"{key} ({recorded.get(key)!r} -> {now.get(key)!r})")
    return changes


def model_hash(run: dict) -> str:
    """The config-level hash of a run's definition (kept as it was for runs started by earlier
    versions; ``definition_hash`` also covers the task's sources and threads)."""
    key = {k: run.get(k) for k in ("framework", "task", "params", "batch_size", "seed")}
    if run.get("validation_split"):  # it changes which samples train (absent: hashes as before)
        key["validation_split"] = run["validation_split"]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


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
SCRIPT_DOES_ITSELF = ("precision", "accumulate", "clip_grad_norm", "num_workers", "validation_split")


def _entry_problems(run: dict, where: str, base: Path, given: set) -> list[str]:
    """Check the run's way in (``task`` or ``script``); a script run gets ``task`` = the script's
    path (its sources are hashed and shipped like a task's) and ``script_args``."""
    import shlex

    script = run.pop("script", None)
    if script is None:
        if not run.get("task"):
            return [f"{where}: give task: (a task file; the pipeline runs the loop) or script: (your own "
                    "training script with segtrain.session()); see README, 'Bringing your training'"]
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


def resolve(config: dict, base: Path = Path("."), schema: dict | None = None) -> dict[str, dict]:
    """Validate ``config`` and return each run's full settings (defaults applied, durations in seconds).

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
        except DurationError as exc:
            problems.append(str(exc))
        if run.get("time_limit_seconds", MIN_TIME_LIMIT) < MIN_TIME_LIMIT:
            problems.append(f"{where}.time_limit: {run['time_limit']!r} is shorter than any job can start, train "
                            f"and save in; give at least {MIN_TIME_LIMIT:g} s (a real limit: the walltime or booking)")
        elif run.get("margin_seconds", 0) >= run.get("time_limit_seconds", float("inf")):
            problems.append(f"{where}.safety_margin: leaves no time in a {run['time_limit']} job; lower it")

        per = run.get("steps_per_segment")
        if isinstance(per, int) and math.ceil(run["total_steps"] / per) > MAX_SEGMENTS:
            problems.append(f"{where}.total_steps: {run['total_steps']:,} steps in segments of {per} make "
                            f"{math.ceil(run['total_steps'] / per):,} jobs, more than {MAX_SEGMENTS:,}; check "
                            "total_steps for a typo, or raise steps_per_segment")
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
    return runs
