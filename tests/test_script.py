"""The script API's refusals and the plan's words for a script run, without training."""

import pytest

import segtrain
from segtrain import script as session_mod
from segtrain.pipeline import training_lines
from segtrain.settings import RunSettings
from segtrain.world import SINGLE


def test_outside_the_pipeline_a_session_needs_the_number_of_steps(monkeypatch):
    monkeypatch.setattr(session_mod, "_STANDALONE", None)
    with pytest.raises(RuntimeError, match=r"not running in a pipeline job.*segtrain.session\(total_steps=100\)"):
        segtrain.session()
    seg = segtrain.session(total_steps=7)
    assert seg.total_steps == 7 and segtrain.session() is seg  # segtrain.keras.fit finds it again


def test_only_objects_with_a_state_can_be_tracked():
    seg = session_mod.Session(RunSettings(total_steps=1))
    with pytest.raises(TypeError, match=r"seg.track\(data=...\): a list has no state_dict"):
        seg.track(data=[1, 2])
    seg.track(optimizer=type("Opt", (), {"state_dict": lambda s: {}, "load_state_dict": lambda s, d: None})())
    with pytest.raises(ValueError, match="track the model first"):
        next(seg.steps([1]))


def test_the_plan_names_the_script_and_whether_its_resume_is_exact():
    run = RunSettings(name="s", task="train.py", script_args=("--lr", "1"), validation_split=0)
    exact, lines = training_lines(run, {"data_loader": "segtrain"})
    assert exact and "the script's own loop (train.py --lr 1)" in lines[1]
    exact, lines = training_lines(run, {"data_loader": "the script's own"})
    assert not exact and "seg.dataloader(dataset, batch_size)" in lines[2]


def test_all_finite_finds_nan_and_infinity_and_accepts_huge_finite_values():
    import torch

    from segtrain.backends.torch_state import all_finite

    ok = [torch.randn(50, 50), torch.zeros(3, dtype=torch.float16)]
    assert all_finite(ok) and all_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(50, 50)
        t[7, 3] = bad
        assert not all_finite([*ok, t])
    huge = torch.full((1000,), 3e38)  # every value finite, their sum overflows
    assert all_finite([huge, torch.full((10,), 60000.0, dtype=torch.float16)])


def test_a_second_call_of_seg_steps_in_one_job_is_an_error_not_zero_steps():
    """It trained 0 steps silently and recorded 'completed' twice."""
    import torch

    seg = session_mod.Session(RunSettings(total_steps=1))
    seg._job = type("Job", (), {"started": True, "world": SINGLE})()  # a job whose steps() already ran
    seg.track(model=torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="called a second time"):
        next(seg.steps([1]))


def test_lightning_cli_saving_its_config_once_is_refused_with_the_fix():
    """LightningCLI writes config.yaml into the log folder and refuses to overwrite it: without a
    logger that folder is the same in every segment's job, so the second job would fail."""
    pytest.importorskip("lightning")
    pytest.importorskip("jsonargparse")
    from types import SimpleNamespace

    from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback

    from segtrain.lightning import config_saved_once

    def trainer(logger, **kwargs):
        callback = SaveConfigCallback(LightningArgumentParser(), {}, **kwargs)
        return SimpleNamespace(callbacks=[callback], logger=logger, log_dir="/work/run")

    why = config_saved_once(trainer(None))
    assert "refuses to overwrite it" in why and "save_config_kwargs={'overwrite': True}" in why
    assert config_saved_once(trainer(None, overwrite=True)) is None
    assert config_saved_once(trainer(object())) is None  # a logger's folder is a new version in every job


def test_the_plan_of_a_script_says_what_its_batches_come_from_and_a_reshard_and_no_reshard_of_a_new_run():
    run = RunSettings(name="s", task="train.py", script_args=(), validation_split=0, processes=2)
    exact, lines = training_lines(run, {"data_loader": "the script's own", "data_iterable": "generator"})
    assert not exact and "NOT known to be bitwise identical" in lines[2] and "script's own generator" in lines[2]
    assert "data loader starts again" not in " ".join(lines)  # no loader it does not have
    exact, lines = training_lines(run, {"data_loader": "the script's own", "data_iterable": "DataLoader"})
    assert not exact and "DataLoader starts its epoch again" in lines[2]
    # checkpoints of 1 process resumed with 2 (allow_reshard): said for a script too
    exact, lines = training_lines(run.replace(allow_reshard=True), {"data_loader": "segtrain"}, written_by=1)
    assert not exact and "written by 1 process(es) and resume with 2" in lines[-1]
    assert not any("resume: bitwise identical" in line for line in lines)
    exact, lines = training_lines(run, {"data_loader": "segtrain"}, written_by=None)  # a new run
    assert not any("written by" in line for line in lines)
    task = RunSettings(name="t", task="task.py", processes=2, batch_size=32, deterministic=True)
    exact, lines = training_lines(task, {}, written_by=None)  # every new multi-process task's plan said it
    assert exact and not any("written by" in line for line in lines)


def test_the_trainers_refusal_of_another_world_names_use_cpu_where_that_is_the_fix():
    pytest.importorskip("transformers")
    from types import SimpleNamespace

    import torch

    from segtrain.huggingface import _world_fix

    if torch.cuda.is_available():
        pytest.skip("the CPU fix is named on machines without CUDA")
    assert "use_cpu=True" in _world_fix(SimpleNamespace(use_cpu=False))
    assert "use_cpu" not in _world_fix(SimpleNamespace(use_cpu=True))


def test_a_reshard_of_a_script_whose_batches_are_its_own_does_not_claim_the_same_samples():
    run = RunSettings(name="s", task="train.py", script_args=(), validation_split=0, processes=1, allow_reshard=True)
    exact, lines = training_lines(run, {"data_loader": "Lightning's"}, written_by=2)
    assert not exact and "written by 2 process(es) and resume with 1" in lines[-1]
    assert "every step trains the same samples" not in lines[-1] and "another number of samples" in lines[-1]
    exact, lines = training_lines(run, {"data_loader": "segtrain"}, written_by=2)
    assert "every step trains the same samples" in lines[-1]
