"""The workflow passes snakefmt and Snakemake's linter (one lint is justified in the Snakefile)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SNAKEMAKE

pytestmark = pytest.mark.e2e  # runs snakemake and snakefmt: not in the fast lane

# Justified in a comment at the top of the Snakefile.
ACCEPTED_LINTS = {"Specify a conda environment or container for each rule."}


def test_snakefmt_check_passes():
    snakefmt = str(Path(sys.executable).parent / "snakefmt")
    r = subprocess.run([snakefmt, "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_snakemake_lint_reports_only_the_justified_lint():
    r = subprocess.run([SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True)
    lints = set(re.findall(r"^\s*\* (.+?):?$", r.stdout + r.stderr, re.M))
    assert lints <= ACCEPTED_LINTS, lints - ACCEPTED_LINTS
