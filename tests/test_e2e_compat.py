"""Checkpoints written by an earlier version resume under this one and end bitwise identical.

``tests/fixtures/written-by-<commit>/`` holds, for a run of the pipeline's own loop (``loop``) and
one of a user's script (``script``), the periodic checkpoint at step 150 of a 200-step run, written
by that commit with ``config.yaml`` beside it, and the final state of the same run uninterrupted
(``final-state.pt``). A change of the checkpoint format, the model definition or the data order
that breaks old checkpoints fails here.

Bitwise identity holds on one machine's arithmetic: a CPU with other vector units (AVX-512 or
AVX2, another vendor's BLAS path) rounds the same training differently. When the resumed run does
not end bitwise on the fixture's final state, this machine trains the fixture's run from step 0:
if its step 150 equals the fixture's, the machine computes as the writer's did and the difference
is a real break (the test fails); if not, the machine's arithmetic differs and the resumed run is
held to the fixture's trajectory within float rounding, and the test says so.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import Project, assert_bitwise_equal, final_state, torch_state_arrays

pytestmark = pytest.mark.e2e

FIXTURES = sorted(Path(__file__).parent.glob("fixtures/written-by-*"))
RUNS = ["loop", "script"]


def _bitwise(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def _largest_difference(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)) / (np.abs(b[k]) + 1e-3)))
               for k in a if a[k].dtype.kind == "f")


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_checkpoints_of_an_earlier_version_resume_and_end_bitwise_identical(tmp_path, fixture):
    p = Project(tmp_path / "proj")
    shutil.copy(fixture / "config.yaml", p.root / "config" / "config.yaml")
    assert sorted(d.name for d in fixture.iterdir() if d.is_dir()) == RUNS
    for run in RUNS:
        (checkpoint,) = (fixture / run).glob("step-*")
        shutil.copytree(checkpoint, p.paths(run).store / checkpoint.name)
    p.snakemake()
    resumed = {}
    for run in RUNS:
        (start,) = [a for a in p.attempts(run) if "resumed_from" in a]
        assert start["resumed_from"] == 150 and start["source"].startswith("periodic checkpoint"), start
        resumed[run] = final_state(p, run)
    expected = {run: torch_state_arrays(fixture / run / "final-state.pt") for run in RUNS}
    if all(_bitwise(resumed[run], expected[run]) for run in RUNS):
        return
    # Not bitwise: a break, or a machine that rounds differently from the writer's. Train the
    # fixture's runs from step 0 here and compare step 150 with the fixture's checkpoint.
    fresh = Project(tmp_path / "fresh")
    shutil.copy(fixture / "config.yaml", fresh.root / "config" / "config.yaml")
    fresh.snakemake()
    for run in RUNS:
        (written,) = (fixture / run).glob("step-*")
        here = torch_state_arrays(fresh.paths(run).store / written.name / "state.pt")
        if _bitwise(here, torch_state_arrays(written / "state.pt")):
            # this machine computes as the writer's did: the resumed run must end on the fixture
            assert_bitwise_equal(resumed[run], expected[run])
        else:
            difference = _largest_difference(resumed[run], expected[run])
            print(f"{fixture.name}/{run}: this machine trains step 150 differently from the machine that wrote "
                  f"the fixture (its arithmetic, not the checkpoint); the resumed run ends within a relative "
                  f"{difference:.1e} of the fixture's final state, checked to 1e-4, not bitwise")
            assert resumed[run].keys() == expected[run].keys()
            assert difference < 1e-4, f"{run}: the resumed run ends {difference:.1e} away from the fixture's state"
