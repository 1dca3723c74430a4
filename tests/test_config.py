"""Bad input is refused before any job starts, with the key and the fix named."""

import time

import pytest

from segtrain import backends
from segtrain.config import ConfigError, resolve
from segtrain.definition import definition_changes
from segtrain.layout import SEGMENT_SUMMARY
from segtrain.settings import DEFINITIONS_ENV, RunSettings, for_jobs, from_jobs

from conftest import KMLP, MLP, REPO


def cfg(run=None, **defaults):
    return {"defaults": defaults, "runs": {"r": {**MLP, "total_steps": 10, **(run or {})}}}


def check(config, *expected):
    with pytest.raises(ConfigError) as exc:
        resolve(config, base=REPO)
    for text in expected:
        assert text in str(exc.value)
    return str(exc.value)


def test_valid_config_gets_defaults_and_seconds():
    runs = resolve(cfg(time_limit="1h30m"), base=REPO)
    r = runs["r"]
    assert r.time_limit_seconds == 5400
    assert r.margin_seconds == pytest.approx(108)  # default 2 %
    assert r.policy == {"max_overhead_percent": 1.0}
    assert r.keep == 2 and len(r.model_hash) == 16


def test_misspelled_key_names_the_key_and_suggests_the_right_one():
    check(cfg({"totl_steps": 5}), "runs.r", "unknown key 'totl_steps'", "did you mean 'total_steps'")
    check(cfg(time_limt="1h"), "defaults", "unknown key 'time_limt'", "did you mean 'time_limit'")
    check({"runs": {"r": {**MLP, "total_steps": 1}}, "run": {}}, "unknown key 'run'", "did you mean 'runs'")


@pytest.mark.parametrize("value,text", [("-5m", "zero or positive"), ("soon", "cannot read"), (0, "must be positive")])
def test_bad_time_limit_is_refused(value, text):
    check(cfg(time_limit=value), "runs.r.time_limit", text)


def test_bad_checkpoint_policy_is_refused():
    check(cfg(checkpoint={"every": "-1h"}), "checkpoint.every")
    check(cfg(checkpoint={"max_overhead": "120%"}), "max_overhead")
    check(cfg(checkpoint={"every": "1h", "mtbf": "1d"}), "exactly one")


def test_several_processes_are_refused_where_they_cannot_train_with_the_reason():
    check(cfg({"processes": 2, "batch_size": 33}), "runs.r.batch_size", "equal shares of 2 processes", "multiple of 2")
    check(cfg({"processes": 2, "batch_size": 32, "accumulate": 3}), "of 3 micro-batches", "multiple of 6")
    check(cfg({**KMLP, "processes": 2}), "runs.r.processes", "PyTorch runs so far")
    fit = {"runs": {"r": {"script": "tests/tasks/script_fit_keras.py", "framework": "keras", "total_steps": 10,
                          "processes": 2}}}
    check(fit, "runs.r.processes", "a Keras run trains in one process")
    for trainer in ("script_lightning.py", "script_huggingface.py"):  # DDP under the job's torchrun
        runs = {"runs": {"r": {"script": f"tests/tasks/{trainer}", "total_steps": 10, "processes": 2}}}
        assert resolve(runs, base=REPO)["r"].world_size == 2
    script = {"runs": {"r": {"script": "tests/tasks/script_ddp_torch.py --lr 0.1", "total_steps": 10, "processes": 2}}}
    assert resolve(script, base=REPO)["r"].model_definition["processes"] == 2
    run = resolve(cfg({"processes": 2, "batch_size": 32}), base=REPO)["r"]
    assert run.processes == 2 and run.model_definition["processes"] == 2
    one = resolve(cfg(), base=REPO)["r"]
    assert "processes" not in one.model_definition  # runs of one process keep the definition they had
    assert definition_changes(run.model_definition, one.model_definition) == ["processes (2 -> 1)"]
    # several nodes: all their processes count, and the same number on one node trains the same way
    check(cfg({"nodes": 2, "processes": 2, "batch_size": 30}), "runs.r.batch_size", "4 processes (2 nodes x 2)",
          "multiple of 4")
    check(cfg({**KMLP, "nodes": 2}), "runs.r.nodes", "PyTorch runs so far", "set nodes: 1")
    on_two = resolve(cfg({"nodes": 2, "batch_size": 32}), base=REPO)["r"]
    assert (on_two.world_size, on_two.model_definition["processes"]) == (2, 2)
    assert on_two.definition_hash == run.definition_hash
    # FSDP2: several processes, one optimizer's loop; what is not built yet is refused by name
    check(cfg({"data_parallel": "fsdp2"}), "runs.r.data_parallel", "set processes above 1")
    check(cfg({"data_parallel": "fsdp2", "processes": 2, "precision": "fp16"}), "runs.r.precision", "use bf16")
    check(cfg({"data_parallel": "fsdp2", "processes": 2, "clip_grad_norm": 1.0}), "runs.r.clip_grad_norm",
          "not built yet")
    check(script | {"runs": {"r": {**script["runs"]["r"], "data_parallel": "fsdp2"}}}, "runs.r.data_parallel",
          "a script run does this in its own loop")
    sharded = resolve(cfg({"processes": 2, "batch_size": 32, "data_parallel": "fsdp2"}), base=REPO)["r"]
    assert sharded.model_definition["data_parallel"] == "fsdp2" and sharded.training["data_parallel"] == "fsdp2"
    assert "data_parallel" not in run.model_definition  # DDP runs keep the definition they had


def test_missing_task_file_is_refused():
    check(cfg({"task": "examples/nope.py"}), "runs.r.task", "'examples/nope.py' not found")


def test_task_without_a_required_function_is_refused(tmp_path):
    task = tmp_path / "task.py"
    task.write_text("def build_model(p):\n    pass\n\ndef build_dataset(p):\n    pass\n")
    check(cfg({"task": str(task)}), "does not define build_optimizer, compute_loss",
          "Bringing your training", "give your own training script as script:")


def test_task_may_import_or_assign_its_functions(tmp_path):
    task = tmp_path / "task.py"
    task.write_text("from mylib import build_model, build_optimizer as build_optimizer\n"
                    "import other\nbuild_dataset = other.data\ncompute_loss: object = other.loss\n")
    run = resolve(cfg({"task": str(task)}), base=REPO)["r"]  # accepted: every function is bound
    assert list(run.model_definition["sources"]) == [str(task)]
    # the same file without one of them is refused, naming it
    task.write_text("from mylib import build_model, build_optimizer\nimport other\nbuild_dataset = other.data\n")
    check(cfg({"task": str(task)}), "runs.r.task", "does not define compute_loss")


def test_framework_that_is_not_installed_names_the_package(monkeypatch):
    info = backends.BackendInfo(module="x", package="surely_not_installed_pkg", install="pip install it",
                                required=())
    monkeypatch.setitem(backends.BACKENDS, "torch", info)
    check(cfg(), "runs.r.framework", "not installed", "pip install it")


def test_model_hash_ignores_length_and_time_limit_but_not_hyperparameters():
    a = resolve(cfg(), base=REPO)["r"].model_hash
    assert resolve(cfg({"total_steps": 99}, time_limit="3h"), base=REPO)["r"].model_hash == a
    assert resolve(cfg({"params": {"lr": 1.0}}), base=REPO)["r"].model_hash != a


@pytest.mark.e2e
@pytest.mark.parametrize("change,expected", [
    ({"totl_steps": 5}, "did you mean 'total_steps'"),
    ({"time_limit": "-3h"}, "runs.r.time_limit"),
    ({"time_limit": "eleven"}, "cannot read 'eleven'"),
    ({"task": "missing.py"}, "'missing.py' not found"),
    ({"total_steps": 10**12}, "implausible (more than 1,000,000,000)"),  # a typo for 10^6
    ({"total_steps": 10**9, "steps_per_segment": 1000}, "more than 100,000"),
])
def test_snakemake_stops_before_any_job_on_bad_input(project, change, expected):
    project.write_config({"r": {**MLP, "total_steps": 10, **change}})
    r = project.snakemake("-n", check=False)
    assert r.returncode != 0
    assert expected in r.stdout + r.stderr
    assert not (project.root / "results").exists()


@pytest.mark.e2e
def test_a_time_limit_that_start_up_dominates_is_refused_and_replanned_without_deleting_files(project):
    # start-up of a PyTorch job is seconds: a 6 s limit would be jobs that mostly start up
    project.write_config({"r": {**MLP, "total_steps": 10}}, time_limit="6s", safety_margin="1s")
    r = project.snakemake(check=False)
    assert r.returncode != 0
    log = (project.root / "logs" / "plan_segments" / "r.log").read_text()
    assert "max_startup_share 25 %" in log and "Raise time_limit to at least" in log
    assert "snakemake --forcerun measure_checkpoint_cost" in log  # the way to re-measure, named
    assert not (project.paths("r").segments).exists()
    # allowing any share still cannot fit one step and one save in it: refused, with the fix
    project.write_config({"r": {**MLP, "total_steps": 10, "max_startup_share": "99%"}},
                         time_limit="30s", safety_margin="29.9s")
    r = project.snakemake(check=False)
    log = (project.root / "logs" / "plan_segments" / "r.log").read_text()
    assert r.returncode != 0 and "shorter than one step plus one save" in log and "raise time_limit" in log
    # the fix applies with the same command: no file to delete by hand, the costs are measured once
    costs = (project.run_dir("r") / "costs.json").stat().st_mtime_ns
    project.write_config({"r": {**MLP, "total_steps": 10}}, time_limit="2m", safety_margin="1s")
    project.snakemake()
    assert (project.run_dir("r") / "model.pt").exists()
    assert (project.run_dir("r") / "costs.json").stat().st_mtime_ns == costs


@pytest.mark.parametrize("change, expected", [
    ({"keep": 3.0}, "runs.r.keep: 3.0 is not a whole number; write 3"),
    ({"batch_size": 32.0}, "runs.r.batch_size: 32.0 is not a whole number; write 32"),
    ({"steps_per_segment": 50.0}, "runs.r.steps_per_segment: 50.0 is not a whole number"),
    ({"seed": 2**32}, "runs.r.seed: 4294967296 is greater than the maximum of 4294967295"),
    ({"time_limit": "1ms"}, "runs.r.time_limit: '1ms' is shorter than any job can start"),
])
def test_values_a_job_would_crash_on_are_refused_before_any_job(change, expected):
    check(cfg(change), expected)


def test_a_deadline_that_has_passed_is_refused():
    config = {**cfg(), "deadline": "2020-01-01T09:00:00+01:00"}
    check(config, "deadline: 2020-01-01T09:00:00+01:00 has passed")


def test_a_deadline_without_a_time_zone_is_refused_with_the_fix():
    check({**cfg(), "deadline": "2099-12-04T09:00:00"}, "deadline: 2099-12-04T09:00:00 has no time zone",
          "'2026-12-04T09:00:00+01:00'", "timezone: Europe/Amsterdam")
    check({**cfg(), "deadline": "2099-12-04T09:00:00", "timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus'")


@pytest.mark.parametrize("config,expected", [
    # 09:00 in Maastricht is 08:00 UTC in winter and 07:00 UTC in summer, in a pod or on a laptop
    ({"deadline": "2099-12-04T09:00:00", "timezone": "Europe/Amsterdam"}, "2099-12-04T08:00:00+00:00"),
    ({"deadline": "2099-07-04T09:00:00", "timezone": "Europe/Amsterdam"}, "2099-07-04T07:00:00+00:00"),
    ({"deadline": "2099-12-04T09:00:00+01:00"}, "2099-12-04T08:00:00+00:00"),
    # YAML reads unquoted dates as date objects: the same meaning as the quoted text
    ({"booking_last_day": __import__("datetime").date(2099, 12, 3)}, "2099-12-04T08:00:00+00:00"),
    ({"booking_last_day": "2099-03-27"}, "2099-03-28T08:00:00+00:00"),  # the booking spans the clock change
    ({"booking_last_day": "2099-12-03", "timezone": "UTC"}, "2099-12-04T09:00:00+00:00"),
])
def test_the_deadline_is_one_instant_wherever_it_is_read(config, expected, monkeypatch):
    from datetime import timezone

    from segtrain.config import deadline_of

    try:
        for tz in ("UTC", "Asia/Tokyo"):  # the process's own zone plays no part
            monkeypatch.setenv("TZ", tz)
            time.tzset()
            assert deadline_of({**cfg(), **config}).astimezone(timezone.utc).isoformat() == expected
            resolve({**cfg(), **config}, base=REPO)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_deadline_and_booking_last_day_together_are_refused():
    check({**cfg(), "deadline": "2099-12-04T09:00:00+01:00", "booking_last_day": "2099-12-03"},
          "deadline and booking_last_day are both set")
    check({**cfg(), "booking_last_day": "2020-12-03"}, "booking_last_day: 2020-12-03", "has passed")
    check({**cfg(), "booking_last_day": "next week"}, "booking_last_day: cannot read 'next week'")


def test_a_binary_task_file_is_refused_with_the_fix(tmp_path):
    task = tmp_path / "model.pt"
    task.write_bytes(b"PK\x03\x04\x00\xff\xfe binary")
    check(cfg({"task": str(task)}), "runs.r.task", "is not a Python source file")


def test_the_definition_covers_the_task_and_the_project_modules_it_imports(tmp_path):
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("")
    (tmp_path / "helpers" / "layers.py").write_text("WIDTH = 32\n")
    (tmp_path / "common.py").write_text("from helpers.layers import WIDTH\n")
    task = tmp_path / "task.py"
    task.write_text((REPO / MLP["task"]).read_text() + "\nimport common\nimport numpy\nimport segtrain\n")
    run = resolve(cfg({"task": "task.py"}), base=tmp_path)["r"]
    assert sorted(run.model_definition["sources"]) == ["common.py", "helpers/__init__.py", "helpers/layers.py",
                                                          "task.py"]
    before = run.model_definition
    (tmp_path / "helpers" / "layers.py").write_text("WIDTH = 64\n")
    after = resolve(cfg({"task": "task.py"}), base=tmp_path)["r"]
    assert after.definition_hash != run.definition_hash
    assert definition_changes(before, after.model_definition) == ["helpers/layers.py (content changed)"]
    # threads are part of it; total_steps only for a task that takes the run context
    assert resolve(cfg({"task": "task.py"}, threads=2), base=tmp_path)["r"].definition_hash != \
        after.definition_hash
    assert "total_steps" not in after.model_definition
    ctx = resolve(cfg({"task": "tests/tasks/onecycle_torch.py"}), base=REPO)["r"].model_definition
    assert ctx["total_steps"] == 10


def test_the_dsri_workspace_profile_refuses_to_start_without_the_booking_end():
    check({**cfg(), "deadline_required": True}, "no deadline", "--config booking_last_day=")
    resolve({**cfg(), "deadline_required": True, "booking_last_day": "2099-01-01"}, base=REPO)


def test_a_script_run_keeps_its_arguments_and_hashes_its_sources(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("import helper\n")
    (tmp_path / "helper.py").write_text("X = 1\n")
    runs = resolve({"runs": {"s": {"script": f"{script} --lr 0.1 --name 'a b'", "total_steps": 10}}}, base=tmp_path)
    run = runs["s"]
    assert run.task == str(script) and run.script_args == ("--lr", "0.1", "--name", "a b")
    definition = run.model_definition
    assert definition["entry"] == "script" and definition["script_args"] == list(run.script_args)
    assert set(definition["sources"]) == {"train.py", "helper.py"}


def test_task_and_script_are_one_or_the_other(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("pass\n")
    check(cfg({"script": str(script)}), "task and script are both set; keep one")
    check({"runs": {"r": {"total_steps": 10}}}, "runs.r: give task: (a task file", "script:")
    check({"runs": {"r": {"script": "nowhere.py", "total_steps": 10}}}, "runs.r.script: file 'nowhere.py' not found")


def test_only_a_script_run_may_leave_total_steps_to_its_framework(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("pass\n")
    check({"runs": {"r": dict(MLP)}}, "runs.r.total_steps: missing", "only a script run may leave it out")
    (run,) = resolve({"runs": {"r": {"script": str(script)}}}, base=REPO).values()
    assert run.total_steps == 0  # the measure job reads the length the script's framework gives


def test_a_script_run_refuses_the_pipeline_loop_settings(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("pass\n")
    run = {"script": str(script), "total_steps": 10}
    check({"runs": {"r": {**run, "accumulate": 4, "validation_split": 0.1}}},
          "runs.r.accumulate: a script run does this in its own loop",
          "runs.r.validation_split: a script run does this in its own loop")
    check({"runs": {"r": {**run, "framework": "keras", "accumulate": 2}}}, "runs.r.accumulate: a script run does")


@pytest.mark.e2e
@pytest.mark.parametrize("root", ["", " ", 5])
def test_a_checkpoint_root_that_is_no_folder_is_refused_before_any_job(project, root):
    import yaml

    path = project.write_config({"r": {**MLP, "total_steps": 10}})
    path.write_text(yaml.safe_dump({"checkpoint_root": root, **yaml.safe_load(path.read_text())}))
    r = project.snakemake("-n", check=False)
    assert r.returncode != 0 and f"checkpoint_root: {root!r} is not a folder" in r.stderr + r.stdout
    assert not (project.root / "results").exists()


@pytest.mark.e2e
def test_a_changed_definition_is_refused_where_its_checkpoints_really_are(project):
    """With checkpoint_root elsewhere, the parse-time check reads the folder the jobs wrote, so a
    changed run is refused before Snakemake deletes anything, and the refusal names that folder."""
    project.write_config({"r": {**MLP, "total_steps": 20}}, checkpoint={"every_steps": 10})
    config = project.root / "config" / "config.yaml"
    import yaml

    data = {"checkpoint_root": "shared", **yaml.safe_load(config.read_text())}
    config.write_text(yaml.safe_dump(data))
    project.snakemake()
    assert (project.root / "shared" / "r" / "ckpt").is_dir()
    data["runs"]["r"]["params"] = {**MLP["params"], "lr": 0.01}
    config.write_text(yaml.safe_dump(data))
    r = project.snakemake(check=False)
    assert r.returncode != 0 and "different model definition" in r.stderr
    assert "shared/r/ckpt" in r.stderr  # the folder to move away is named
    assert (project.paths("r").segment_dir(0) / SEGMENT_SUMMARY).exists()  # nothing deleted


def test_every_setting_reaches_the_jobs_through_their_environment():
    """Jobs get only the keys whose change must rerun them as params; every other resolved
    setting (num_workers, async_save, grace_period, ...) comes from the environment the workflow
    sets, exactly as resolved (num_workers never reached a training job)."""
    import json

    runs = resolve({"defaults": {"async_save": False, "grace_period": "45s"},
                    "runs": {"r": {"task": "tests/tasks/augment_digits_torch.py", "total_steps": 100,
                                   "num_workers": 2}}}, base=REPO)
    environ = {DEFINITIONS_ENV: for_jobs(runs)}
    params = json.loads(json.dumps(runs["r"].subset(("name", "framework", "task", "params", "seed", "batch_size"))))
    job = from_jobs(params, environ)
    assert job == runs["r"]
    assert job.num_workers == 2 and job.async_save is False and job.grace_period_seconds == 45
    # the rule's params win where both have a key; a key no version knows is an error, not dropped
    assert from_jobs({**params, "seed": 7}, environ).seed == 7
    with pytest.raises(TypeError, match="unknown run settings: numworkers"):
        from_jobs({**params, "numworkers": 2}, environ)


def test_the_settings_defaults_are_the_schemas_and_every_key_is_a_setting():
    """RunSettings documents each key once; its defaults must be the schema's (the schema is
    what users read and what resolve applies)."""
    import dataclasses

    from segtrain.config import load_schema

    schema = load_schema()
    props = {**schema["$defs"]["settings"]["properties"], **schema["$defs"]["run"]["properties"]}
    fields = {f.name: f for f in dataclasses.fields(RunSettings)}
    assert set(props) - {"script"} <= set(fields)  # script becomes task + script_args
    default = RunSettings()
    for key, spec in props.items():
        if "default" in spec:
            assert getattr(default, key) == spec["default"], key
    # the derived defaults are what resolve makes of the schema's defaults
    resolved = resolve({"runs": {"r": {**MLP, "total_steps": 1}}}, base=REPO)["r"]
    derived = ("time_limit_seconds", "margin_seconds", "grace_period_seconds", "max_startup_percent", "policy")
    assert {k: getattr(default, k) for k in derived} == {k: getattr(resolved, k) for k in derived}
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.keep = 3


@pytest.mark.parametrize("config, says", [
    ({"runs": {"a\n": {**MLP, "total_steps": 10}}}, "'a\\n' is not a run name"),  # Python's $ took it
    ({"runs": {"r" * 300: {**MLP, "total_steps": 10}}}, "1 to 100 letters"),  # failed at the first job
    ({"runs": {"r": {**MLP, "total_steps": 10, "processes": 1000}}}, "at most 256"),
    ({"checkpoint_root": "/dev/null", "runs": {"r": {**MLP, "total_steps": 10}}}, "/dev/null exists and is not a folder"),
])
def test_names_processes_and_a_checkpoint_root_no_job_could_use_are_refused_with_the_fix(config, says):
    with pytest.raises(ConfigError) as refused:
        resolve(config, base=REPO)
    assert says in str(refused.value)


def test_resume_check_reads_a_bare_off_and_refuses_an_unknown_choice():
    import yaml

    assert resolve(cfg(**yaml.safe_load("resume_check: off")), base=REPO)["r"].resume_check == "off"
    assert resolve(cfg(), base=REPO)["r"].resume_check == "auto"
    check(cfg(resume_check="sometimes"), "resume_check")
    check(cfg(resume_check_steps=1), "resume_check_steps")


@pytest.mark.e2e
def test_an_installed_segtrain_resolves_a_config_outside_the_repository(tmp_path):
    """The schema ships in the package (workflow/schemas/ links to it): a segtrain installed from
    its wheel, away from this checkout, checks a config. It once read ../workflow from the package."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel"), str(REPO)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("segtrain-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    (tmp_path / "task.py").write_text((REPO / MLP["task"]).read_text())
    code = ("import segtrain.config as c\n"
            f"runs = c.resolve({{'runs': {{'r': {{'task': 'task.py', 'total_steps': 10}}}}}}, base={str(tmp_path)!r})\n"
            "print(c.SCHEMA)\nprint(runs['r'].total_steps)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    schema, steps = r.stdout.split()
    assert schema.startswith(str(site)) and steps == "10", r.stdout
