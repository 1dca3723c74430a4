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
from pathlib import Path

import yaml

from . import backends
from .durations import DurationError, parse_duration, parse_percent

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
    if err.validator == "required":
        return f"{where}: {err.message}; add it (see config/README.md)"
    if err.validator in ("minProperties", "maxProperties") and where.endswith("checkpoint"):
        return f"{where}: set exactly one of every, every_steps, max_overhead, mtbf"
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


def model_hash(run: dict) -> str:
    """Hash of what defines the model and its training trajectory; a resume must match it."""
    key = {k: run[k] for k in ("framework", "task", "params", "batch_size", "seed")}
    if run.get("validation_split"):  # it changes which samples train (absent: hashes as before)
        key["validation_split"] = run["validation_split"]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def resolve(config: dict, base: Path = Path("."), schema: dict | None = None) -> dict[str, dict]:
    """Validate ``config`` and return each run's full settings (defaults applied, durations in seconds).

    Raises ConfigError listing every problem found.
    """
    import jsonschema

    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(_format_schema_error(e, schema) for e in errors))

    if config.get("deadline"):
        from datetime import datetime

        try:
            datetime.fromisoformat(str(config["deadline"]))
        except ValueError:
            raise ConfigError(
                f"invalid config:\n  deadline: cannot read {config['deadline']!r} as a date and time; "
                "write it like '2026-12-04T09:00:00+01:00'"
            ) from None
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
        if run.get("margin_seconds", 0) >= run.get("time_limit_seconds", float("inf")):
            problems.append(f"{where}.safety_margin: leaves no time in a {run['time_limit']} job; lower it")

        hint = backends.missing_package(run["framework"])
        if hint:
            problems.append(
                f"{where}.framework: '{run['framework']}' is not installed in this environment; {hint}"
            )
        task = find_task(run["task"], base)
        if task is None:
            problems.append(
                f"{where}.task: file '{run['task']}' not found in {Path(base).resolve()} or {REPO}; "
                "give a path relative to the working directory"
            )
        else:
            try:
                defined = task_functions(task)
            except SyntaxError as exc:
                problems.append(f"{where}.task: '{run['task']}' is not valid Python: {exc}")
            else:
                info = backends.BACKENDS[run["framework"]]
                missing = [f for f in info.required if f not in defined]
                if missing:
                    problems.append(
                        f"{where}.task: '{run['task']}' does not define {', '.join(missing)}; a "
                        f"{run['framework']} task needs {', '.join(info.required)} (see README, 'Writing a task')"
                    )
        run["name"] = name
        run["model_hash"] = model_hash(run)
        runs[name] = run
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return runs
