"""DSRI's Kubernetes Jobs, executed: the real executor plugin builds each Job against a stand-in API
server, and the Job's exact container command and environment run as PID 1 of a fresh PID
namespace in an empty working directory (tests/pod.py), as a node would run them.
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from k8s_standin import StandIn
from pod import GRACE, Kubelet, unshare_available

from segtrain.layout import RunPaths, working_metrics

from conftest import SNAKEMAKE, assert_bitwise_equal, final_state, final_state_in, last_logged_step, load_weights

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not unshare_available(), reason="needs unshare (util-linux) to make PID namespaces")]

SLOW = {"task": "tasks/slow_digits_torch.py", "params": {"pause": 0.01}}
RUN = {**SLOW, "total_steps": 600, "steps_per_segment": 300}
SETTINGS = dict(time_limit="10m", measure_steps=3, measure_saves=2, checkpoint={"every_steps": 100}, log_every=1)


def head(project, pvc, *extra):
    return [SNAKEMAKE, "--profile", "profiles/dsri-jobs", "--default-storage-prefix", str(pvc / "segtrain"),
            "--config", f"checkpoint_root={pvc / 'checkpoints'}", "--dsri-namespace", "my-project",
            "--container-image", "registry.example/segtrain:1", "--seconds-between-status-checks", "1", *extra]


def start_head(project, api, tmp_path, *extra):
    import subprocess

    env = {**os.environ, "KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig"))}
    log = open(tmp_path / f"head-{time.time_ns()}.log", "w+")
    proc = subprocess.Popen(head(project, tmp_path / "pvc", *extra), cwd=project.root, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def head_output(proc) -> str:
    proc.log.seek(0)
    return proc.log.read()


def attempts(store: Path) -> list[dict]:
    return [json.loads(line) for line in (store / RunPaths.ATTEMPTS).read_text().splitlines() if line.strip()]


def test_a_pod_stopped_by_kubernetes_saves_within_the_grace_and_the_rerun_ends_bitwise_identical(
        tmp_path, tmp_path_factory):
    from conftest import Project

    # the reference: the same training, uninterrupted, on the local executor
    reference = Project(tmp_path_factory.mktemp("reference") / "proj")
    reference.write_config({"r": {**RUN, "params": {"pause": 0.0}}}, **SETTINGS)
    reference.snakemake()

    project = Project(tmp_path / "proj")
    project.write_config({"r": RUN}, **SETTINGS)
    project.git_commit_all()
    pvc = tmp_path / "pvc"
    store = pvc / "checkpoints" / "r" / "ckpt"
    # measure and plan on the machine that submits; every later job is a Job run as a pod
    project.snakemake(*head(project, pvc)[1:], "--executor", "local", "--cores", "2", "--until", "plan_segments")

    kubelet = Kubelet(tmp_path / "node")
    with StandIn(kubelet=kubelet) as api:
        proc = start_head(project, api, tmp_path, "--retries", "0")
        deadline = time.time() + 300
        # past the periodic save at 100, in the first segment's pod
        while last_logged_step(working_metrics(store, 0)) < 150:
            assert proc.poll() is None and time.time() < deadline, head_output(proc)[-4000:] + "".join(
                p.output()[-3000:] for p in kubelet.pods)
            time.sleep(0.01)
        (pod,) = [p for p in kubelet.pods if p.poll() is None]
        assert "train_segment" in " ".join(pod.command)
        pod.stop()  # SIGTERM to the pod's PID 1 only, SIGKILL after the grace period
        proc.wait(timeout=120)
        assert pod.poll() is not None and pod.ended - pod.stop_sent < GRACE, "the pod outlived its grace period"
        out = pod.output()

    ends = [a for a in attempts(store) if a.get("status") == "stopped"]
    assert ends and "SIGTERM" in ends[0]["reason"], out[-4000:]
    stopped_at = ends[0]["end_step"]
    assert 150 <= stopped_at < 300 and stopped_at % 100 != 0, stopped_at  # saved where the signal found it
    assert max(int(p.name.split("-")[-1]) for p in store.glob("step-*")) == stopped_at

    # the same command again: new pods resume from that step and finish the run
    kubelet = Kubelet(tmp_path / "node2")
    with StandIn(kubelet=kubelet) as api:
        proc = start_head(project, api, tmp_path)
        assert proc.wait(timeout=600) == 0, head_output(proc)[-4000:] + "".join(p.output()[-3000:] for p in kubelet.pods)
    starts = [a["resumed_from"] for a in attempts(store) if "resumed_from" in a]
    assert starts[:2] == [0, stopped_at]
    assert all(p.poll() == 0 for p in kubelet.pods) and len(kubelet.pods) >= 2

    results = pvc / "segtrain" / "results" / "r"
    assert_bitwise_equal(final_state_in(results), final_state(reference, "r"))
    mine, theirs = load_weights(results / "model.pt"), load_weights(reference.run_dir("r") / "model.pt")
    assert mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.parametrize("case", ["untracked task file", "not a git repository"])
def test_a_job_whose_files_the_archive_lacks_is_refused_before_any_job_is_created(tmp_path, case):
    import subprocess

    from conftest import Project

    project = Project(tmp_path / "proj")
    (project.root / "mytask.py").write_text((project.root / "tasks" / "slow_digits_torch.py").read_text())
    project.write_config({"r": {**RUN, "task": "mytask.py"}}, **SETTINGS)
    pvc = tmp_path / "pvc"
    if case == "untracked task file":
        project.git_commit_all(leave_out=("mytask.py",))
    with StandIn() as api:
        env = {**os.environ, "KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig"))}
        r = subprocess.run(head(project, pvc, "--retries", "0"), cwd=project.root, env=env,
                           capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and api.jobs == [], out[-3000:]
    assert "mytask.py  (needed by run 'r')" in out and "No job was created." in out
    if case == "untracked task file":
        assert "Fix: git add mytask.py" in out
    else:
        assert "scripts/train_segment.py" in out and "not a git repository" in out
