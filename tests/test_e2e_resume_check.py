"""The measure job's resume check (segtrain.check), through the real snakemake: a clean script is
measured bitwise, and each trap that real scripts fall into is named with its step, its object and
its fix; the verdicts agree with real runs cut into segments; resume_check: refuse stops the run
before any training job, with the command that checks a fixed script again."""

import csv
import json
import shutil

import pytest

from conftest import Project, final_state

pytestmark = pytest.mark.e2e

SCRIPT = "tasks/script_traps_torch.py"  # script_digits_torch.py with the traps (that one a fixture keeps)
TOTAL = 40
TRAPS = {  # run: (script arguments, what its verdict must say)
    "clean": ("", None),
    "before": ("--draw-before-loop", ["step 3, the first after the restore", "yields None",
                                      "drawn before seg.steps() restored the random streams"]),
    "counter": ("--step-counter", ["step 3's lr is", "the learning rate of step 3, the first after the restore",
                                   "a step counter of the script's own", "seg.track(scheduler=...)"]),
    "own": ("--own-loader", ["step 3's loss", "the script's own DataLoader", "it shuffles",
                             "seg.dataloader(dataset, batch_size)"]),
    "untracked": ("--untracked-module", ["step 3's loss", "computed another loss from the same restored weights",
                                         "an untracked module"]),
}


def run(args: str, **more) -> dict:
    return {"script": f"{SCRIPT} {args}".strip(), "total_steps": TOTAL, **more}


@pytest.fixture(scope="module")
def checked(tmp_path_factory):
    p = Project(tmp_path_factory.mktemp("check") / "proj")
    runs = {name: run(args, resume_check="warn", steps_per_segment=TOTAL // 2) for name, (args, _) in TRAPS.items()}
    # a trap's script uninterrupted (no check): what its verdict is compared with (the clean script's
    # 1 vs 4 segments with kills: test_e2e_script.py)
    runs["before-1"] = run("--draw-before-loop", steps_per_segment=TOTAL)
    p.write_config(runs, checkpoint={"every_steps": 10}, log_every=1)
    whole = ("before", "before-1")
    p.snakemake(*(f"results/{name}/metrics.csv" for name in whole),
                *(f"results/{name}/plan.json" for name in TRAPS if name not in whole), timeout=1800)
    return p


def verdict_of(p: Project, name: str) -> dict:
    return json.loads((p.run_dir(name) / "plan.json").read_text())["resume_check"]


@pytest.mark.parametrize("name", list(TRAPS))
def test_each_trap_is_named_with_its_step_and_fix_and_a_clean_script_is_bitwise(checked, name):
    verdict = verdict_of(checked, name)
    plan = (checked.run_dir(name) / "plan.txt").read_text()
    assert verdict["text"] in plan and verdict["steps"] == 4 and verdict["restored_at"] == 2
    expected = TRAPS[name][1]
    if expected is None:
        assert verdict["bitwise"] and json.loads((checked.run_dir(name) / "plan.json").read_text())["bitwise_resume"]
        assert "resume checked: bitwise identical at step 4 after a restore at step 2 (1 process" in plan
        return
    assert not verdict["bitwise"] and verdict["first_step"] == 3, verdict
    for words in expected:
        assert words in verdict["text"], (words, verdict["text"])
    assert "resume checked: NOT bitwise identical after a restore at step 2" in plan
    # the other leads are named only where they fit what the job saw
    if name != "own":
        assert "it shuffles" not in verdict["text"]
    if name in ("untracked", "counter"):
        assert "yields None" not in verdict["text"]


def test_the_verdicts_agree_with_runs_cut_into_segments(checked, measured):
    # a batch drawn before the loop: NOT bitwise measured, and 2 segments end elsewhere than 1, from the
    # step the check named (the first after the cut at step 20)
    a, b = final_state(checked, "before"), final_state(checked, "before-1")
    assert any(not (a[k] == b[k]).all() for k in a if k.startswith("model."))

    def losses(name):
        with open(checked.run_dir(name) / "metrics.csv", newline="") as fh:
            return {int(r["step"]): r["loss"] for r in csv.DictReader(fh)}

    cut, whole = losses("before"), losses("before-1")
    assert [s for s in range(1, TOTAL + 1) if cut[s] != whole[s]][0] == TOTAL // 2 + 1
    # every training job of a run that trains anyway says so (resume_check: warn)
    log = (checked.root / "logs" / "train_segment" / "before" / "0001.log").read_text()
    assert "resume checked: NOT bitwise identical" in log and "(resume_check: warn)" in log

    # what the check costs the measure job (its benchmark: measure + check)
    for name in TRAPS:
        verdict = verdict_of(checked, name)
        with open(checked.root / "benchmarks" / "measure_checkpoint_cost" / f"{name}.tsv") as fh:
            job = float(next(csv.DictReader(fh, delimiter="\t"))["s"])
        measured("resume check", f"{name}: the measure job took {job:.1f} s, of which the check {verdict['seconds']:.1f} s "
                 f"({verdict['jobs']} jobs): {job / max(job - verdict['seconds'], 1e-9):.2f}x the job without it")


def test_refuse_stops_the_run_before_any_training_job_and_names_the_command_to_check_again(checked):
    p = Project(checked.root.parent / "refused")
    p.write_config({"counter": run("--step-counter", resume_check="refuse", steps_per_segment=TOTAL // 2)},
                   checkpoint={"every_steps": 10}, log_every=1)
    # the measurement and its check as the checked project made them (the same run): only the plan is new
    shutil.copytree(checked.run_dir("counter"), p.run_dir("counter"))
    (p.run_dir("counter") / "plan.json").unlink()
    r = p.snakemake(check=False, timeout=900)
    assert r.returncode != 0
    text = (p.root / "logs" / "plan_segments" / "counter.log").read_text()
    assert "No training job starts (resume_check: refuse)" in text and "step 3's lr is" in text
    assert "--forcerun results/counter/costs.json" in text and "resume_check: warn" in text
    assert not (p.root / "logs" / "measure_checkpoint_cost").exists()  # the copied costs were used
    assert not (p.root / "logs" / "train_segment").exists()
    assert (p.run_dir("counter") / "costs.json").exists()  # the measurement stays; only the plan refuses


def test_the_standalone_command_prints_the_same_verdict(checked, measured):
    import subprocess
    import sys
    import time

    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "segtrain.check", "--config", "config/config.yaml", "--run", "counter"],
                          cwd=checked.root, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t
    assert done.returncode == 3, done.stderr[-3000:]
    verdict = verdict_of(checked, "counter")
    first_line = done.stdout.splitlines()[0]
    assert first_line.startswith(verdict["text"].split(": step 3's lr")[0]) and "step 3's lr is" in first_line
    measured("resume check", f"python -m segtrain.check --run counter (a trap: 3 jobs): {seconds:.1f} s")
