"""The profiles: local, SLURM and DSRI (Kubernetes), the last checked against DSRI's pod rules."""

import json
import os
import re
import subprocess

import pytest
import yaml
from k8s_standin import StandIn

from conftest import MLP, REPO, SNAKEMAKE

pytestmark = pytest.mark.e2e

GI, MI = 1024**3, 1024**2


def quantity(value: str) -> float:
    """A Kubernetes quantity in base units (cores for cpu, bytes otherwise)."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 1024, "Mi": MI, "Gi": GI, "Ti": 1024**4}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    return float(m.group(1)) * units.get(m.group(2), 1)


def runtimes(output: str) -> set[int]:
    """The runtime resource of every train_segment job in a dry run's output."""
    blocks = re.findall(r"rule train_segment:\n(?:\s+.*\n)*?\s+resources: (.*)", output)
    return {int(re.search(r"runtime=(\d+)", b).group(1)) for b in blocks}


def dsri_args(project, pvc):
    return ["--profile", "profiles/dsri-jobs", "--default-storage-prefix", str(pvc / "segtrain"),
            "--config", f"checkpoint_root={pvc / 'checkpoints'}"]


BOOKING = "booking_last_day=2099-12-03"


@pytest.mark.parametrize("profile,runtime", [("local", 10), ("slurm", 10), ("dsri-jobs", 1440), ("dsri", 1440)])
def test_each_profile_dry_run_shows_the_segment_runtime_the_plan_used(project, tmp_path, profile, runtime):
    project.write_config({"r": {**MLP, "total_steps": 200, "steps_per_segment": 100}},
                         time_limit="10m", measure_steps=3, measure_saves=2)
    if profile == "dsri-jobs":
        args = dsri_args(project, tmp_path / "pvc")
        project.snakemake(*args, "--executor", "local", "--cores", "2", "--until", "plan_segments")
    elif profile == "dsri":
        args = ["--profile", "profiles/dsri", "--config", BOOKING]
        project.snakemake(*args, "--until", "plan_segments")
    else:
        args = ["--profile", f"profiles/{profile}"]
        project.snakemake("--until", "plan_segments")
    r = project.snakemake(*args, "-n")
    assert runtimes(r.stdout + r.stderr) == {runtime}  # one setting: the plan's time_limit, in minutes
    executor = yaml.safe_load((project.root / "profiles" / profile / "config.yaml").read_text()).get("executor")
    assert executor == {"local": None, "slurm": "slurm", "dsri-jobs": "dsri", "dsri": None}[profile]
    if profile == "dsri-jobs":
        plan = json.loads((tmp_path / "pvc/segtrain/results/r/plan.json").read_text())
        assert plan["time_limit"] == 86400  # the DSRI profile's 24 h reached the plan too


def test_the_dsri_workspace_profile_needs_the_booking_end_and_reads_it_in_maastricht_time(project):
    project.write_config({"r": {**MLP, "total_steps": 200}})
    r = project.snakemake("--profile", "profiles/dsri", "-n", check=False)
    assert r.returncode != 0 and "booking_last_day=" in r.stdout + r.stderr
    r = project.snakemake("--profile", "profiles/dsri", "-n", "--config", "deadline=2099-12-04T09:00:00")
    assert r.returncode == 0  # the profile names the zone: 09:00 is Maastricht's


def captured_jobs(project, tmp_path, args):
    project.git_commit_all()  # jobs get the workflow through the source archive: git-tracked files
    with StandIn() as api:
        env = {**os.environ, "KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig"))}
        cmd = [SNAKEMAKE, *args, "--dsri-namespace", "my-project", "--container-image",
               "registry.example/segtrain:1", "--retries", "0", "--seconds-between-status-checks", "1"]
        r = subprocess.run(cmd, cwd=project.root, env=env, capture_output=True, text=True, timeout=300)
    assert api.jobs, f"no Job was submitted:\n{r.stderr[-4000:]}"
    return api.jobs


def check_dsri_pod_rules(job, gpu: bool):
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    res = container["resources"]
    for kind in ("cpu", "memory", "ephemeral-storage"):
        assert kind in res["requests"] and kind in res["limits"], f"{kind} request and limit are required"
    assert quantity(res["requests"]["cpu"]) <= 32 and quantity(res["limits"]["cpu"]) <= 128
    assert quantity(res["requests"]["memory"]) <= 128 * GI and quantity(res["limits"]["memory"]) <= 512 * GI
    assert quantity(res["limits"]["ephemeral-storage"]) <= 50 * GI
    assert (res["limits"].get("nvidia.com/gpu") == "1") is gpu
    assert (res["requests"].get("nvidia.com/gpu") == "1") is gpu
    assert container["image"] == "registry.example/segtrain:1"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"pvc-segtrain": "pvc-segtrain"}
    assert {"name": "pvc-segtrain", "mountPath": "/data"} in container["volumeMounts"]
    assert spec["restartPolicy"] == "Never"
    # DSRI's job guideline; shared memory for loader workers and NCCL; a walltime Kubernetes enforces
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    (shm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert job["spec"]["activeDeadlineSeconds"] >= 30 * 60
    # PID 1 passes SIGTERM on to training; nothing is installed from a registry at pod start
    assert container["command"][:4] == ["python", "-m", "segtrain.podinit", "--"]
    assert "pip" not in " ".join(container["command"] + container["args"])
    assert {"name": "USER", "value": "segtrain"} in container["env"]  # arbitrary UID without a passwd entry


def test_dsri_jobs_profile_submits_jobs_that_follow_dsri_pod_rules(project, tmp_path):
    project.write_config({"r": {**MLP, "total_steps": 100, "steps_per_segment": 50}},
                         time_limit="10m", measure_steps=3, measure_saves=2)
    pvc = tmp_path / "pvc"
    args = dsri_args(project, pvc)
    # measured and planned already: the first Job is a training segment
    project.snakemake(*args, "--executor", "local", "--cores", "2", "--until", "plan_segments")
    (train,) = captured_jobs(project, tmp_path, args)
    assert "train_segment" in train["spec"]["template"]["spec"]["containers"][0]["args"][-1]
    check_dsri_pod_rules(train, gpu=True)
    # everything trained already: the first Job is the export, which needs no GPU
    project.snakemake(*args, "--executor", "local", "--cores", "2", "--omit-from", "export_torch")
    (export,) = captured_jobs(project, tmp_path, args)
    assert "export_torch" in export["spec"]["template"]["spec"]["containers"][0]["args"][-1]
    check_dsri_pod_rules(export, gpu=False)


def test_dsri_profile_resolves_by_name_after_make_profiles(project, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"} | {"HOME": str(home)}
    subprocess.run(["make", "-s", "-C", str(REPO), "profiles"], env=env, check=True, capture_output=True)
    assert (home / ".config/snakemake/dsri-jobs").resolve() == REPO / "profiles/dsri-jobs"
    assert (home / ".config/snakemake/dsri").resolve() == REPO / "profiles/dsri"
    project.write_config({"r": {**MLP, "total_steps": 100}})
    pvc = tmp_path / "pvc"
    r = subprocess.run([SNAKEMAKE, "--profile", "dsri-jobs", "-n", "--default-storage-prefix", str(pvc),
                        "--config", f"checkpoint_root={pvc / 'checkpoints'}"],
                       cwd=project.root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Using profile dsri-jobs" in r.stdout + r.stderr


def test_inside_the_job_image_rules_run_the_image_python_and_apptainer_needs_the_image_named(project, tmp_path):
    """Under apptainer the submitting machine's SEGTRAIN_PYTHON names a path of another environment;
    the image sets SEGTRAIN_IMAGE_PYTHON and every rule runs that one."""
    import sys

    project.write_config({"r": {**MLP, "total_steps": 100}}, measure_steps=3, measure_saves=2)
    used = tmp_path / "used"
    image_python = tmp_path / "image-python"
    image_python.write_text(f"#!/bin/sh\necho \"$@\" >> {used}\nexec {sys.executable} \"$@\"\n")
    image_python.chmod(0o755)
    project.snakemake("--until", "plan_segments", env={"SEGTRAIN_IMAGE_PYTHON": str(image_python)})
    scripts = {line.split()[0].rsplit("/", 1)[-1] for line in used.read_text().splitlines()}
    assert scripts == {"measure_checkpoint_cost.py", "check_resume.py", "plan_segments.py"}
    r = project.snakemake("-n", "--software-deployment-method", "apptainer", check=False)
    assert r.returncode != 0 and "--config container_image=docker://" in r.stdout + r.stderr


def test_the_workflow_runs_as_a_module_of_another_workflow(tmp_path):
    """What snakedeploy and the workflow catalog expect: workflow/Snakefile, used as a module."""
    user = tmp_path / "my-analysis"
    (user / "config").mkdir(parents=True)
    (user / "config" / "config.yaml").write_text(yaml.safe_dump({
        "defaults": {"time_limit": "10m", "measure_steps": 3, "measure_saves": 2, "checkpoint": {"every_steps": 50}},
        "runs": {"r": {**MLP, "task": str(REPO / MLP["task"]), "total_steps": 100, "steps_per_segment": 50}}}))
    (user / "Snakefile").write_text(
        'configfile: "config/config.yaml"\n\n\n'
        f'module segtrain:\n    snakefile:\n        "{REPO}/workflow/Snakefile"\n    config:\n        config\n\n\n'
        "use rule * from segtrain\n")
    r = subprocess.run([SNAKEMAKE, "--cores", "2", "all"], cwd=user, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (user / "results/r/model.pt").exists() and len(list((user / "results/r/segments").iterdir())) == 2
