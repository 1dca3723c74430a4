"""Will a cluster job without a shared file system get every file it runs?

Kubernetes jobs (no shared file system) receive the workflow only through Snakemake's source
archive: the Snakefile, its rules and config files, and the files git tracks. An untracked task
file, or a copy of the project that is not a git repository (no scripts/, no segtrain/ in the
archive), passes every check on the machine that submits and fails in every pod. This compares
what the archive holds with what the jobs run, before any job is created.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterable


def needed_by_jobs(runs: dict, workflow_dir: Path, base: Path) -> dict[str, list[str]]:
    """File (relative to ``base``, the working directory) -> the runs or parts that need it."""
    needed: dict[str, list[str]] = {}

    def add(path: Path, why: str):
        path = Path(path)
        if path.is_absolute():
            try:
                path = path.resolve().relative_to(Path(base).resolve())
            except ValueError:
                pass  # outside the working directory: can never be shipped
        needed.setdefault(os.path.normpath(str(path)), []).append(why)

    workflow_dir = Path(workflow_dir).resolve()
    for script in sorted((workflow_dir / "scripts").glob("*.py")):
        add(script, "the workflow's scripts")
    for module in sorted((workflow_dir / "segtrain").rglob("*.py")):
        add(module, "the segtrain package")
    for data in sorted((workflow_dir / "segtrain" / "schemas").glob("*.yaml")):
        add(data, "the segtrain package (a job's Snakemake checks the config with it)")
    for name, run in runs.items():
        for source in run.model_definition.get("sources", {}):
            add(Path(base) / source if not Path(source).is_absolute() else Path(source), f"run '{name}'")
    return needed


def missing_from_archive(shipped: Iterable[str], needed: dict[str, list[str]]) -> dict[str, list[str]]:
    have = {os.path.normpath(f) for f in shipped}
    return {f: why for f, why in needed.items() if f not in have}


def is_git_work_tree(base: Path) -> bool:
    try:
        out = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=base, capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return out.returncode == 0 and out.stdout.strip() == "true"


def refusal(missing: dict[str, list[str]], base: Path) -> str:
    outside = [f for f in missing if Path(f).is_absolute() or f.startswith("..")]
    lines = [f"  {f}  (needed by {', '.join(sorted(set(why)))})" for f, why in sorted(missing.items())]
    text = ("Jobs without a shared file system (Kubernetes) receive the workflow only through Snakemake's "
            "source archive (the Snakefile, rules, config files and the files git tracks), and it would "
            "lack files they run:\n" + "\n".join(lines[:20]) + ("\n  ..." if len(lines) > 20 else "") + "\n")
    if outside:
        text += ("Files outside the working directory are never shipped: move them under it "
                 f"({', '.join(outside[:3])}).\n")
    if not is_git_work_tree(base):
        text += ("This folder is not a git repository, so the archive has no git-tracked files at all. Run "
                 "from a git clone of the project, or: git init && git add -A && git commit -m 'my run'.\n")
    else:
        inside = [f for f in missing if f not in outside]
        if inside:
            text += (f"Fix: git add {' '.join(inside[:5])}{' ...' if len(inside) > 5 else ''} "
                     "(Snakemake ships the working-tree content of tracked files; commit to keep a record "
                     "of what ran).\n")
    return text + "No job was created."
