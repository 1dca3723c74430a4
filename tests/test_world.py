"""The world of a segment's processes: one process alone, and two real torchrun ranks (gloo on
CPU) that agree, save one checkpoint together and resume from the same one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segtrain import runner
from segtrain import store as st
from segtrain.planning import Segment
from segtrain.settings import RunSettings
from segtrain.world import SINGLE, SeveralProcesses, current

from conftest import assert_bitwise_equal

HERE = Path(__file__).parent


def test_one_process_is_the_main_one_and_agrees_with_itself():
    world = current({})
    assert world is SINGLE and world.is_main and (world.rank, world.world_size) == (0, 1)
    assert world.agree(True) is True and world.agree(False) is False
    assert world.agree_reason("SIGTERM") == "SIGTERM" and world.agree_reason(None) is None
    assert world.broadcast({"attempt": 3}) == {"attempt": 3}
    assert world.all_gather(5) == [5]
    world.barrier()
    assert current({"WORLD_SIZE": "1"}) is SINGLE


@pytest.mark.parametrize("environ, why", [({"WORLD_SIZE": "two"}, "not a number"),
                                          ({"WORLD_SIZE": "2"}, "without RANK, MASTER_ADDR, MASTER_PORT")])
def test_a_world_the_launcher_did_not_make_is_refused_with_the_reason(environ, why):
    with pytest.raises(SeveralProcesses, match=why):
        current(environ)


def test_the_segment_job_refuses_a_half_made_world_before_it_touches_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    seg = Segment(index=0, start=0, end=10, interval=5, time_limit=60, save_seconds=0.1, eval_every=10,
                  monitor="loss", mode="min", keep=2, log_every=1)
    paths = runner.RunPaths(tmp_path / "run")
    with pytest.raises(SeveralProcesses, match="torchrun"):
        runner.SegmentJob(RunSettings(), seg, paths, None, paths.segment_dir(0))
    assert not (tmp_path / "run").exists()


def test_two_ranks_agree_save_together_and_resume_from_the_same_checkpoint(tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(HERE / "ranks" / "world_check.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for r, seen in enumerate(ranks):
        assert (seen["rank"], seen["size"], seen["main"]) == (r, 2, r == 0)
        assert seen["agree_one"] is True and seen["agree_none"] is False  # one rank's flag is everyone's
        assert seen["reason"] == "SIGTERM" and seen["reason_lowest"] == "rank 0"
        assert seen["broadcast"] == {"attempt": 7} and seen["gathered"] == [0, 10]
        # one checkpoint: the main rank's state and the other rank's streams, committed with the world size
        assert seen["files_1"] == seen["files_2"] == ["rank-00001.pt", "state.pt"]
        assert seen["world_size_recorded"] == 2
        # a write that failed on rank 1 fails on both, and leaves nothing
        assert "rank 1" in seen["failed_save"] and not seen["step_3_exists"] and seen["temporaries"] == []
        # rank 1's file of step 2 is damaged: both ranks resume from step 1, each with its own streams
        assert seen["resumed_step"] == 1 and seen["skipped"] == [2] and seen["own_streams_back"]
    assert ranks[0]["first_draw"] != ranks[1]["first_draw"]


def test_several_processes_agree_as_often_as_one_percent_of_the_steps_time_allows():
    from segtrain.stopping import MOST_STEPS_BETWEEN_AGREEMENTS, agreement_interval

    assert agreement_interval([20e-6] * 8, 0.005) == 1  # 20 us against a 5 ms step: 0.4 %, every step
    assert agreement_interval([0.9e-3, 0.8e-3, 5e-3], 0.005) == 18  # the median, 0.9 ms: every 18 steps
    assert agreement_interval([1.0], 0.001) == MOST_STEPS_BETWEEN_AGREEMENTS  # a stop waits at most that
    assert agreement_interval([], 0.005) == 1


def test_a_resume_at_another_number_of_processes_is_recorded_and_carried_on():
    from segtrain.resume import reshards
    from segtrain.world import World

    two = World(rank=0, world_size=2)
    assert reshards({}, 0, 2, two) == []  # a fresh start reshards nothing
    assert reshards({}, 40, 2, two) == []
    first = reshards({}, 40, 1, two)
    assert first == [{"step": 40, "from": 1, "to": 2}]
    assert reshards({"reshards": first}, 60, 2, two) == first  # carried by every later checkpoint
    assert reshards({"reshards": first}, 80, 2, SINGLE) == first + [{"step": 80, "from": 2, "to": 1}]


def test_a_job_on_several_nodes_runs_one_torchrun_per_node_through_srun(tmp_path):
    from segtrain import launch

    # the job's command: srun starts it once per node with the node's CPUs; a bad exit ends all
    assert launch.srun_argv(2, 4, ["python", "train_segment.py"]) == [
        "srun", "--ntasks=2", "--cpus-per-task=4", "--kill-on-bad-exit=1", "--export=ALL", "python", "train_segment.py"]
    # each node's: torchrun with no restarts, SIGUSR1 forwarded, meeting the others at the first node
    argv = launch.node_argv(4, 2, "train_segment.py", 30, "node1:29411", "77")
    assert {"--nnodes=2", "--nproc-per-node=4", "--max-restarts=0", "--rdzv-backend=c10d",
            "--rdzv-endpoint=node1:29411", "--rdzv-id=segtrain-77"} <= set(argv)
    assert any(a.startswith("--signals-to-handle=") and "SIGUSR1" in a for a in argv) and argv[-1] == "train_segment.py"
    # outside SLURM there are no nodes to start: refused with the way out
    r = subprocess.run([sys.executable, "-c", "from segtrain import launch; launch.as_ranks(1, 5, nodes=2)"],
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE.parent)})
    assert r.returncode != 0 and "outside SLURM" in r.stderr and "profiles/slurm" in r.stderr


def test_fsdp2_shards_are_saved_by_each_rank_and_load_at_the_same_and_another_number_of_processes(tmp_path):
    def ranks(n: int, mode: str) -> None:
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
                               str(HERE / "ranks" / "fsdp_check.py"), mode, str(tmp_path)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-4000:]

    ranks(2, "write")
    manifest = st.verify(tmp_path / "ckpt" / st.step_dir_name(3))
    assert set(manifest["files"]) == {"state.pt", "shard-00000.pt", "shard-00001.pt"} and manifest["world_size"] == 2
    ranks(3, "read")  # another number of processes: every rank's rows joined, sharded again in 3
    ranks(2, "read")  # the same number: each rank its own rows
    written = torch.load(tmp_path / "write-2-0.pt", weights_only=True)
    assert written["model.0.weight"].shape == (5, 6) and float(written["lr"]) == 0.05
    for name in ["read-3-0", "read-3-1", "read-3-2", "read-2-0", "read-2-1"]:
        assert_bitwise_equal(written, torch.load(tmp_path / f"{name}.pt", weights_only=True))
    # rank 1's shard of step 4 is damaged: both ranks resume from step 3, each with its own rows
    damaged = tmp_path / "ckpt" / st.step_dir_name(4) / "shard-00001.pt"
    damaged.write_bytes(damaged.read_bytes()[:-3] + b"xyz")
    ranks(2, "resume")
    for r in (0, 1):
        resumed = torch.load(tmp_path / f"resume-2-{r}.pt", weights_only=True)
        assert int(resumed.pop("step")) == 3 and resumed.pop("skipped").tolist() == [4]
        assert_bitwise_equal(written, resumed)
    # the export's whole model: every rank's rows joined
    from segtrain.backends.torch_sharded import sharded_weights

    joined = sharded_weights(tmp_path / "ckpt" / st.step_dir_name(3))
    assert_bitwise_equal({f"model.{k}": v for k, v in joined.items()},
                         {k: v for k, v in written.items() if k.startswith("model.")})


def test_a_rank_that_stops_taking_part_is_named_with_how_long_it_has_been_silent():
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           str(HERE / "ranks" / "silent_check.py")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SEGTRAIN_COLLECTIVE_TIMEOUT": "30"})
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("rank 0: waiting")]
    assert len(lines) == 2, done.stderr[-4000:]
    assert "at the agreement at a step boundary: rank 1 has been silent for" in lines[0]
    assert "stopped, frozen or gone" in lines[0] and "SEGTRAIN_COLLECTIVE_TIMEOUT=30 s" in lines[0]
    assert "at a barrier: rank 1 is busy outside the collectives" in lines[1]
