"""The resume check's comparison and verdict on real checkpoint files (the jobs themselves run in
tests/test_e2e_resume_check.py)."""

import json

import torch

from segtrain.check import compare_metrics, compare_states, judge, verdict_line
from segtrain.settings import RunSettings


def state(folder, weight, rng, *, time=1.0, flos=10.0, history=0.1):
    folder.mkdir(parents=True)
    torch.save({"model": {"w": weight}, "rng": {"torch": rng},
                "extra": {"step": 4, "row": {"loss": 1.0, "time": time}}}, folder / "state.pt")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4, "total_flos": flos,
                                                           "log_history": [{"epoch": history}]}))
    (folder / "manifest.json").write_text(json.dumps({"time": time}))


def test_values_are_compared_not_bytes_times_and_trainer_records_are_not_divergences(tmp_path):
    w, rng = torch.arange(6, dtype=torch.float32), torch.arange(4, dtype=torch.uint8)
    state(tmp_path / "a", w, rng, time=1.0, flos=10.0, history=0.1)
    state(tmp_path / "b", w.clone(), rng.clone(), time=2.0, flos=5.0, history=0.2)
    found = compare_states(tmp_path / "a", tmp_path / "b")
    assert {d["object"] for d in found} == {"total_flos", "log_history[0].epoch"}
    assert all(d.get("record") for d in found)

    w2 = w.clone()
    w2[3] += 0.5
    state(tmp_path / "c", w2, rng.clone())
    found = compare_states(tmp_path / "a", tmp_path / "c")
    assert found == [{"file": "state.pt", "object": "model.w", "size": "largest difference 0.5 in 1 of 6 values"}]


def test_the_verdict_names_the_first_divergence_and_the_cause_it_fits(tmp_path):
    run = RunSettings(name="r", task="train.py", script_args=(), deterministic=True)
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, lrs in ((a, ["0.1", "0.09", "0.08", "0.07"]), (b, ["0.1", "0.09", "0.1", "0.09"])):
        folder.mkdir()
        (folder / "metrics.csv").write_text("step,loss,lr,time\n" + "".join(
            f"{s},1.0,{lr},{s + (folder == b)}\n" for s, lr in enumerate(lrs, 1)))
    metrics = compare_metrics(a, b, after=2)
    assert metrics == [{"step": 3, "column": "lr", "straight": "0.08", "resumed": "0.1"},
                       {"step": 4, "column": "lr", "straight": "0.07", "resumed": "0.09"}]
    verdict = judge(run, 4, 2, {"differences": [], "metrics": metrics}, {})
    assert not verdict["bitwise"] and verdict["first_step"] == 3 and verdict["policy"] == "refuse"
    assert "step 3's lr is 0.1 after the restore, 0.08 straight" in verdict["text"]
    assert "schedule's position is not in the checkpoint" in verdict["cause"]
    # two straight jobs that differ: the kernels, not the resume
    nondeterministic = judge(run, 4, 2, {"differences": [], "metrics": metrics, "straight_runs_differ": True}, {})
    assert "non-deterministic" in nondeterministic["cause"] and "deterministic: true" in nondeterministic["fix"]
    # a shuffling loader of the script's own is named only when the job saw one
    loss = [{"step": 3, "column": "loss", "straight": "1.0", "resumed": "1.1"}]
    own = {"data": "approximate: the script's own DataLoader restarts at its beginning on a resume", "data_shuffled": True}
    assert "it shuffles" in judge(run, 4, 2, {"differences": [], "metrics": loss}, own)["cause"]
    plain = judge(run, 4, 2, {"differences": [], "metrics": loss}, {})["cause"]
    assert "shuffles" not in plain and "before seg.steps() restored the random streams" in plain
    clean = judge(run, 4, 2, {"differences": [], "metrics": []}, {})
    clean.update(seconds=3.5, jobs=2)
    assert verdict_line(clean) == ("  resume checked: bitwise identical at step 4 after a restore at step 2 (1 "
                                   "process, on this machine) [the check took 3.5 s, 2 jobs]")
    assert "not checked (resume_check: off)" in verdict_line(None)


def test_a_keras_state_is_compared_variable_by_variable(tmp_path):
    import numpy as np

    from segtrain.arrays import write_arrays

    for name, bias in (("a", 0.0), ("b", 0.25)):
        folder = tmp_path / name
        folder.mkdir()
        with open(folder / "state.bin", "wb") as fh:
            index = write_arrays(fh, {"model_00000": np.ones((2, 3), np.float32),
                                      "model_00001": np.full(3, bias, np.float32)})
        (folder / "state.json").write_text(json.dumps({"rng": [1, 2], "arrays": index}))
    found = compare_states(tmp_path / "a", tmp_path / "b")
    assert found == [{"file": "state.bin", "object": "model_00001", "size": "largest difference 0.25 in 3 of 3 values"}]
