"""What defines a run's model, so a resume finds the same one: the task file found, the sources
it imports (hashed), the settings that change a step, and their hashes; and what differs between
two definitions, for people. No framework is imported: tasks are read as syntax trees."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

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


CONTEXT_FUNCTIONS = ("build_model", "build_optimizer", "build_scheduler")


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
                     "num_workers": 0, "data_parallel": "ddp"}
KERAS_EQUIVALENT = {
    "num_workers": "arrays (Keras tasks give arrays; loader workers are for PyTorch Datasets)",
    "precision": "keras.mixed_precision.set_global_policy('mixed_bfloat16') in build_model",
    "accumulate": "the optimizer's gradient_accumulation_steps",
    "clip_grad_norm": "the optimizer's global_clipnorm",
    "data_parallel": "one process (Keras runs train in one process)",
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
    # Several processes sum their gradients in another order than one: a resume at another number
    # of processes is another trajectory (recorded only above 1: earlier runs keep their definition).
    # All processes of all nodes: the same number on one node or on several trains the same way
    world = run.get("processes", 1) * run.get("nodes", 1)
    if world > 1:
        definition["processes"] = world
    if "script_args" in run:  # a script run: the script is run with these arguments
        definition["entry"] = "script"
        definition["script_args"] = run["script_args"]
    definition["sources"] = task_sources(task_path, base)
    if uses_run_context(task_path):
        definition["total_steps"] = run.get("total_steps", 0)
    return definition


def definition_hash(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]


ABSENT_MEANS = {"processes": 1}  # keys a definition records only away from their default


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
        elif recorded.get(key, ABSENT_MEANS.get(key)) != now.get(key, ABSENT_MEANS.get(key)):
            changes.append(f"{key} ({recorded.get(key, ABSENT_MEANS.get(key))!r} -> "
                           f"{now.get(key, ABSENT_MEANS.get(key))!r})")
    return changes


def differs_in_processes_only(recorded: dict, now: dict) -> bool:
    """Whether two model definitions differ in the number of processes and in nothing else (a
    resume that ``allow_reshard`` may allow)."""
    def rest(definition):
        return {k: v for k, v in definition.items() if k != "processes"}

    return recorded.get("processes", 1) != now.get("processes", 1) and \
        definition_hash(rest(recorded)) == definition_hash(rest(now))


def model_hash(run: dict) -> str:
    """The config-level hash of a run's definition (kept as it was for runs started by earlier
    versions; ``definition_hash`` also covers the task's sources and threads)."""
    key = {k: run.get(k) for k in ("framework", "task", "params", "batch_size", "seed")}
    if run.get("validation_split"):  # it changes which samples train (absent: hashes as before)
        key["validation_split"] = run["validation_split"]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# Where the sources of a run's definitions are kept, by content (under the run's checkpoint
# folder): what a refusal shows the diff against, and what an accepted edit names the lines of
SOURCES_FOLDER = "sources"
EDITABLE = ("sources", "script_args")  # what `continue_edited` may accept: the script fixed, not the run's settings


def keep_sources(definition: dict, store_root: Path, base: Path = Path(".")) -> None:
    """Copy each source of ``definition`` into ``store_root/sources/<sha256>`` (once per content)."""
    folder = Path(store_root) / SOURCES_FOLDER
    for name, digest in (definition.get("sources") or {}).items():
        target = folder / str(digest)
        if target.exists():
            continue
        source = Path(name) if Path(name).is_absolute() else Path(base) / name
        try:
            data = source.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != digest:
            continue  # edited since the definition was read: not the content it names
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{digest}.tmp"
        tmp.write_bytes(data)
        tmp.replace(target)


def changed_lines(old: str, new: str) -> str:
    """The lines of ``new`` an edit changed, for people: 'lines 120-124, 130' ('lines removed
    after 57' where it only removed)."""
    import difflib

    spans = []
    for tag, _, _, j1, j2 in difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(),
                                                     autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        if j2 > j1:
            spans.append(f"{j1 + 1}-{j2}" if j2 - j1 > 1 else f"{j1 + 1}")
        else:
            spans.append(f"removed after {j1}")
    return ("lines " + ", ".join(spans)) if spans else "no line (whitespace at the end)"


def source_edits(recorded: dict, now: dict, store_root: Path, base: Path = Path("."), diff_lines: int = 24) -> list[dict]:
    """Each source file whose content differs between two definitions: its name, the lines the
    edit changed and a short unified diff (when the old content was kept: ``keep_sources``)."""
    import difflib

    old, new = recorded.get("sources") or {}, now.get("sources") or {}
    edits = []
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name):
            continue
        edit = {"file": name, "where": "added" if name not in old else "no longer imported" if name not in new else ""}
        kept = Path(store_root) / SOURCES_FOLDER / str(old.get(name))
        current = Path(name) if Path(name).is_absolute() else Path(base) / name
        if not edit["where"]:
            if kept.is_file() and current.is_file():
                before, after = kept.read_text(errors="replace"), current.read_text(errors="replace")
                edit["where"] = changed_lines(before, after)
                diff = list(difflib.unified_diff(before.splitlines(), after.splitlines(), f"{name} (checkpoints)",
                                                 f"{name} (now)", n=1, lineterm=""))
                edit["diff"] = "\n".join(diff[:diff_lines] + (["..."] if len(diff) > diff_lines else []))
            else:
                edit["where"] = "content changed (its earlier content was not kept)"
        edits.append(edit)
    return edits


def only_sources_differ(recorded: dict, now: dict) -> bool:
    """Whether two definitions differ in what `continue_edited` may accept and nothing else."""
    def rest(definition):
        return {k: v for k, v in definition.items() if k not in EDITABLE}

    return definition_hash(rest(recorded)) == definition_hash(rest(now))
