"""The single process's world, and the refusal of a job launched as several processes."""

import pytest

from segtrain import runner
from segtrain.planning import Segment
from segtrain.world import SINGLE, SeveralProcesses, current


def test_one_process_is_the_main_one_and_agrees_with_itself():
    world = current({})
    assert world is SINGLE and world.is_main and (world.rank, world.world_size) == (0, 1)
    assert world.agree(True) is True and world.agree(False) is False
    assert world.agree_reason("SIGTERM") == "SIGTERM" and world.agree_reason(None) is None
    assert world.broadcast({"attempt": 3}) == {"attempt": 3}
    world.barrier()
    assert current({"WORLD_SIZE": "1"}) is SINGLE


@pytest.mark.parametrize("size, why", [("2", "one of 2 processes"), ("two", "not a number")])
def test_a_job_launched_as_several_processes_is_refused_with_the_reason(size, why):
    with pytest.raises(SeveralProcesses, match=why):
        current({"WORLD_SIZE": size})


def test_the_segment_job_refuses_torchrun_before_it_touches_the_store(tmp_path, monkeypatch):
    """Two ranks would each write the ledger, the metrics and the checkpoints: refused at once,
    with nothing written."""
    monkeypatch.setenv("WORLD_SIZE", "4")
    seg = Segment(index=0, start=0, end=10, interval=5, time_limit=60, save_seconds=0.1, eval_every=10,
                  monitor="loss", mode="min", keep=2, log_every=1)
    paths = runner.RunPaths(tmp_path / "run")
    with pytest.raises(SeveralProcesses, match="torchrun"):
        runner.SegmentJob({"keep": 2}, seg, paths, None, paths.segment_dir(0))
    assert not (tmp_path / "run").exists()
