"""Checkpoints written by an earlier version resume under this one and end bitwise identical.

``tests/fixtures/written-by-<commit>/`` holds, for a run of the pipeline's own loop (``loop``) and
one of a user's script (``script``), the periodic checkpoint at step 150 of a 200-step run, written
by that commit with ``config.yaml`` beside it, and the final state of the same run uninterrupted
(``final-state.pt``). A change of the checkpoint format, the model definition or the data order
that breaks old checkpoints fails here.
"""

import shutil
from pathlib import Path

import pytest

from conftest import Project, assert_bitwise_equal, final_state, torch_state_arrays

pytestmark = pytest.mark.e2e

FIXTURES = sorted(Path(__file__).parent.glob("fixtures/written-by-*"))


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_checkpoints_of_an_earlier_version_resume_and_end_bitwise_identical(tmp_path, fixture):
    p = Project(tmp_path / "proj")
    shutil.copy(fixture / "config.yaml", p.root / "config" / "config.yaml")
    runs = sorted(d.name for d in fixture.iterdir() if d.is_dir())
    assert runs == ["loop", "script"]
    for run in runs:
        (checkpoint,) = (fixture / run).glob("step-*")
        shutil.copytree(checkpoint, p.paths(run).store / checkpoint.name)
    p.snakemake()
    for run in runs:
        (start,) = [a for a in p.attempts(run) if "resumed_from" in a]
        assert start["resumed_from"] == 150 and start["source"].startswith("periodic checkpoint"), start
        assert_bitwise_equal(final_state(p, run), torch_state_arrays(fixture / run / "final-state.pt"))
