"""Lightning and Hugging Face Trainer scripts with their segtrain callbacks, through the real
snakemake command: stopped mid-segment by SIGTERM, each resumes from the verified checkpoint at the
step it stopped and ends bitwise identical to an uninterrupted run (Lightning's data from the
stateful seg.dataloader; the Trainer skips the batches it has seen), with the trainers' own
validation metrics at the same steps and the same best model; in one process and in two."""

import json
import os
import signal

import pytest

from segtrain import store as st
from segtrain.layout import SEGMENT_STATE, working_metrics

from conftest import Project
from support import metric_rows, ranks_of, three_failures, wait_for_checkpoint, wait_for_logged_step

pytestmark = pytest.mark.e2e
SNAKEMAKE_TARGETS = ("models",)  # no test here reads the figures: plans and exports only

TOTAL = 300


def whole_and_cut(tmp_path, script, monitor, log_every, slow="--step-sleep 0.02"):
    """The run in 1 segment (project ref, run "ref") and in 4 (project cut, run "cut") through a
    SIGKILL of the training process, a SIGTERM and a killed Snakemake (support.three_failures),
    saving every 30 steps (no save at a validation step: a SIGKILL between a save and the
    trainer's validation at the same step loses that validation, a documented limit); the best
    checkpoint judged by the trainer's own ``monitor``. Returns both projects and the step the
    SIGTERM stopped at."""
    ref = Project(tmp_path / "ref")
    ref.write_config({"ref": {"script": script, "total_steps": TOTAL, "steps_per_segment": TOTAL}},
                     log_every=log_every, monitor=monitor)
    ref.snakemake()
    p = Project(tmp_path / "cut")
    p.write_config({"cut": {"script": f"{script} {slow}", "total_steps": TOTAL,
                            "steps_per_segment": TOTAL // 4}}, log_every=log_every, monitor=monitor,
                   checkpoint={"every_steps": 30}, resume_check="warn")
    attempts = three_failures(p, "cut", TOTAL // 4, 30)
    return ref, p, next(a["end_step"] for a in attempts if "SIGTERM" in a.get("reason", ""))


def best_of(p, run):
    import json

    return json.loads(sorted(p.paths(run).segments.glob("*/segment.json"))[-1].read_text())["best"]


def assert_the_trainers_metrics(ref, cut, monitor, evaluated_at, cut_lacks=frozenset()):
    """The training loss at every 10th step (but ``cut_lacks`` in the cut run); the trainer's own
    evaluations at ``evaluated_at`` in both runs, with equal values; the best checkpoint judged by
    them, the same step in both."""
    rows = {"ref": metric_rows(ref, "ref"), "cut": metric_rows(cut, "cut")}
    for run, m in rows.items():
        wanted = set(range(10, TOTAL + 1, 10)) - (set(cut_lacks) if run == "cut" else set())
        assert wanted <= set(m["loss"].dropna().index), (run, m)
        assert list(m[monitor].dropna().index) == evaluated_at, run
    assert rows["ref"][monitor].dropna().equals(rows["cut"][monitor].dropna())
    best = [best_of(ref, "ref"), best_of(cut, "cut")]
    assert best[0]["step"] == best[1]["step"] in evaluated_at and best[0]["monitor"] == monitor, best
    return rows


CLI = "tasks/script_lightning_cli.py --trainer.val_check_interval 100 --trainer.check_val_every_n_epoch null"


def test_a_lightning_cli_script_through_kills_and_a_sigterm_resumes_bitwise(tmp_path, measured):
    """LightningCLI as Lightning's docs write it, its training data from seg.dataloader (a stateful
    loader Lightning restores mid-epoch, set to the exact step by the callback) and every random
    stream restored: 4 segments through a SIGKILL, a SIGTERM and a killed Snakemake end bitwise
    identical to 1, with the same validations and the same best model by val_loss."""
    pytest.importorskip("lightning")
    pytest.importorskip("jsonargparse")
    import torch

    ref, p, stopped_at = whole_and_cut(tmp_path, CLI, "val_loss", log_every=1, slow="--model.step_sleep 0.02")
    # Lightning validates every 100 steps (val_check_interval) in both, and nowhere else
    rows = assert_the_trainers_metrics(ref, p, "val_loss", evaluated_at=[100, 200, 300])
    assert rows["ref"]["val_acc"].dropna().equals(rows["cut"]["val_acc"].dropna())
    final = {}
    for project, run, last in ((ref, "ref", 0), (p, "cut", 3)):
        ckpt = torch.load(project.paths(run).segment_dir(last) / SEGMENT_STATE / "lightning.ckpt", weights_only=True)
        assert ckpt["global_step"] == TOTAL
        final[run] = ckpt["state_dict"]
    exported = torch.load(p.run_dir("cut") / "model.pt", weights_only=True)
    assert all(torch.equal(exported[k], final["cut"][k]) for k in exported)
    diff = max((final["ref"][k] - final["cut"][k]).abs().max().item() for k in final["ref"])
    norm = max(final["ref"][k].abs().max().item() for k in final["ref"])
    measured("lightning", f"LightningCLI, 4 segments through a SIGKILL, a SIGTERM (stopped at step {stopped_at}) and a "
             f"killed Snakemake: max |weight difference| vs 1 segment {diff:.4g} (max |weight| {norm:.4g})")
    assert all(torch.equal(final["ref"][k], final["cut"][k]) for k in final["ref"])
    best_ref, best_cut = torch_load(ref.run_dir("ref") / "model.best.pt"), torch_load(p.run_dir("cut") / "model.best.pt")
    assert all(best_ref[k].equal(best_cut[k]) for k in best_ref)
    plan = (p.run_dir("cut") / "plan.txt").read_text()
    # the measure job's resume check said so before any training job, and the run agrees
    assert "resume checked: bitwise identical at step 4 after a restore at step 2" in plan
    # code after fit runs once on the trained model (checkpoints.finished); each other job says why not
    logs = {f.name: f.read_text() for f in (p.root / "logs" / "train_segment" / "cut").glob("000?.log")}
    assert [name for name, text in sorted(logs.items()) if "trained: validation loss" in text] == ["0003.log"], logs
    assert all("checks `if checkpoints.finished:`" in logs[f"000{i}.log"] for i in range(3))


def test_a_hugging_face_trainer_through_kills_and_a_sigterm_resumes_bitwise(tmp_path, measured):
    """The Trainer as the text-classification guide writes it (eval_strategy="epoch",
    compute_metrics, the default logging_steps): 4 segments through a SIGKILL, a SIGTERM and a
    killed Snakemake end bitwise identical to 1, with the same evaluations and best model."""
    pytest.importorskip("transformers")
    from safetensors.torch import load_file

    ref, p, stopped_at = whole_and_cut(tmp_path, "tasks/script_huggingface.py", "eval_loss", log_every=1)
    # the Trainer evaluates at each epoch's end (46 steps) and at the run's end in both, not at a
    # cut (75, 150, 225 or a stop); its default logging_steps (500) logs no loss: the callback asks
    # for it at the run's log_every
    # the Trainer logs a step's loss after the step's callbacks: a save the job was stopped or killed
    # right after has none (at the SIGKILL's checkpoint and the stops' steps), and the Trainer does
    # not log it again; every other step's loss equals the uninterrupted run's
    ended = {a["end_step"] for a in p.attempts("cut") if a.get("status") == "stopped"}
    ended.add(next(a["resumed_from"] for a in p.attempts("cut")
                   if "resumed_from" in a and (a["segment"], a["attempt"]) == (1, 2)))  # the SIGKILL's checkpoint
    rows = assert_the_trainers_metrics(ref, p, "eval_loss", evaluated_at=[*range(46, TOTAL + 1, 46), TOTAL],
                                       cut_lacks=ended)
    assert rows["ref"]["eval_accuracy"].dropna().equals(rows["cut"]["eval_accuracy"].dropna())
    losses = rows["cut"]["loss"].dropna()
    assert set(rows["ref"].index) - set(losses.index) == ended
    assert losses.equals(rows["ref"]["loss"].loc[losses.index])
    best_ref, best_cut = torch_load(ref.run_dir("ref") / "model.best.pt"), torch_load(p.run_dir("cut") / "model.best.pt")
    assert all(best_ref[k].equal(best_cut[k]) for k in best_ref)
    final = {}
    for project, run, last in ((ref, "ref", "0000"), (p, "cut", "0003")):
        state = project.paths(run).segments / last / SEGMENT_STATE
        assert json.loads((state / "trainer_state.json").read_text())["global_step"] == TOTAL
        assert not (state / "training_args.bin").exists()  # a pickle: not kept
        final[run] = load_file(str(state / "model.safetensors"))
    diff = max((final["ref"][k] - final["cut"][k]).abs().max().item() for k in final["ref"])
    measured("huggingface", f"4 segments through a SIGKILL, a SIGTERM (stopped at step {stopped_at}) and a killed "
             f"Snakemake: max |weight difference| vs 1 segment {diff:.4g}")
    # the Trainer restores its RNG states and skips the batches it has seen: the same weights
    assert all(final["ref"][k].equal(final["cut"][k]) for k in final["ref"])
    exported = torch_load(p.run_dir("cut") / "model.pt")
    assert all(exported[k].equal(final["cut"][k]) for k in exported)
    plan = (p.run_dir("cut") / "plan.txt").read_text()
    assert "resume checked: bitwise identical at step 4 after a restore at step 2" in plan


def test_the_trainers_own_epochs_give_the_run_its_length_before_any_training_job(tmp_path):
    """A config without total_steps: the measure job reads Lightning's max_epochs and the Trainer's
    num_train_epochs and the plan trains that many steps; a total_steps that disagrees with them,
    or a max_epochs that would end Lightning before it, is refused by the measure job, with the
    number to set."""
    pytest.importorskip("lightning")
    pytest.importorskip("transformers")
    p = Project(tmp_path / "proj")
    p.write_config({"lightning": {"script": "tasks/script_lightning.py --epochs 2"},
                    "hf": {"script": "tasks/script_huggingface.py --epochs 2"},
                    "disagrees": {"script": "tasks/script_huggingface.py --epochs 2", "total_steps": TOTAL},
                    "binds": {"script": "tasks/script_lightning.py --max-epochs 2", "total_steps": TOTAL}})
    r = p.snakemake("--until", "plan_segments", "--keep-going", "--show-failed-logs", check=False)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "the Trainer's num_train_epochs=2 trains 92 steps, and the run's total_steps is 300: set total_steps: " \
           "92 in the config" in out, out[-3000:]
    assert "Lightning's max_epochs=2 of 46 steps ends training at step 92, before the run's total_steps 300: set " \
           "total_steps: 92 in the config" in out, out[-3000:]
    for run, said in (("lightning", "Lightning's max_epochs=2 of 46 batches trains 92"),
                      ("hf", "the Trainer's num_train_epochs=2 trains 92")):
        plan = (p.run_dir(run) / "plan.txt").read_text()
        assert f"run length: 92 steps, from the script ({said}" in plan, plan
        assert json.loads((p.run_dir(run) / "plan.json").read_text())["segments"][-1]["end"] == 92
    assert not any(p.paths(run).segments.exists() for run in ("lightning", "hf", "disagrees", "binds"))


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)


@pytest.mark.parametrize("script", ["tasks/script_lightning.py", "tasks/script_huggingface.py"])
def test_a_trainer_in_two_processes_stops_at_one_step_on_a_sigterm_to_the_launcher_and_resumes(tmp_path, measured,
                                                                                               script):
    """The callbacks under torchrun (DDP over gloo): a SIGTERM to the launcher, as SLURM or a pod
    sends it, stops both processes at one step with one complete checkpoint; the retry resumes there.
    Both runs end bitwise identical to an uninterrupted 2-process one (every process's random
    streams saved; Lightning's data from seg.dataloader, each process its share of a step)."""
    pytest.importorskip("lightning" if "lightning" in script else "transformers")
    import torch

    total, part = 160, 80
    two = {"processes": 2, "total_steps": total, "checkpoint": {"every_steps": 20}}
    p = Project(tmp_path / "proj")
    p.write_config({"whole": {"script": script, **two, "steps_per_segment": total},
                    "cut": {"script": f"{script} --step-sleep 0.05", **two, "steps_per_segment": part}},
                   log_every=1, monitor="loss")
    store_root = p.paths("cut").store
    proc = p.popen("--retries", "2")
    wait_for_checkpoint(store_root, 20, proc, timeout=300)
    wait_for_logged_step(working_metrics(store_root, 0), 30, proc)
    launcher, _, _ = ranks_of(store_root)
    os.kill(launcher, signal.SIGTERM)
    proc.wait(timeout=600)
    assert proc.returncode == 0, proc.stdout.read()[-3000:]

    attempts = p.attempts("cut")
    stopped = [a for a in attempts if a.get("status") == "stopped"]
    assert len(stopped) == 1 and "SIGTERM" in stopped[0]["reason"], attempts
    step = stopped[0]["end_step"]
    # saved at the step: a checkpoint both processes wrote together (one rank elsewhere would not commit it)
    assert 30 <= step < part and stopped[0]["saved_step"] == step, stopped
    starts = [(a["segment"], a["resumed_from"]) for a in attempts if "resumed_from" in a]
    assert starts == [(0, 0), (0, step), (1, part)]
    manifest = st.verify(store_root / st.step_dir_name(total))  # the step-31 checkpoint is pruned by then
    assert manifest["world_size"] == 2

    if "lightning" in script:
        final = {run: torch.load(p.paths(run).segment_dir(n) / SEGMENT_STATE / "lightning.ckpt", weights_only=True)
                 for run, n in (("whole", 0), ("cut", 1))}
        assert final["whole"]["global_step"] == final["cut"]["global_step"] == total
        weights = {run: final[run]["state_dict"] for run in final}
    else:
        from safetensors.torch import load_file

        assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(manifest["files"])  # each process's streams
        weights = {run: load_file(str(p.paths(run).segment_dir(n) / SEGMENT_STATE / "model.safetensors"))
                   for run, n in (("whole", 0), ("cut", 1))}
    diff = max((weights["whole"][k] - weights["cut"][k]).abs().max().item() for k in weights["whole"])
    measured(f"{script} x2", f"SIGTERM to torchrun: both processes stopped at step {step}, resumed there; "
             f"max |weight difference| vs uninterrupted {diff:.4g}")
    assert all(weights["whole"][k].equal(weights["cut"][k]) for k in weights["whole"])
