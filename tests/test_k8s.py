"""The Job patch (segtrain.k8s) and the source-archive check (segtrain.shipping), without a cluster."""

import pytest
from kubernetes import client

from segtrain.k8s import PodSpecError, patch_job
from segtrain.settings import RunSettings
from segtrain.shipping import missing_from_archive, needed_by_jobs, refusal

from conftest import REPO


def stock_job(command: str) -> client.V1Job:
    container = client.V1Container(name="snakemake", image="img", command=["/bin/sh"], args=["-c", command],
                                   volume_mounts=[client.V1VolumeMount(name="workdir", mount_path="/workdir")])
    pod = client.V1PodSpec(containers=[container], restart_policy="Never",
                           volumes=[client.V1Volume(name="workdir", empty_dir=client.V1EmptyDirVolumeSource())])
    return client.V1Job(metadata=client.V1ObjectMeta(name="j"),
                        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=pod)))


def test_the_patch_drops_the_pip_prefix_and_makes_the_init_pid_1():
    job = patch_job(stock_job("pip install --target '.snakemake/pip-deployments' snakemake-storage-plugin-fs && "
                              "python -m snakemake --deploy-sources a b && python -m snakemake --mode remote"),
                    runtime_minutes=1440, ttl_seconds=600, shm_mb=1024)
    container = job.spec.template.spec.containers[0]
    assert container.command == ["python", "-m", "segtrain.podinit", "--", "/bin/sh"]
    assert container.args == ["-c", "python -m snakemake --deploy-sources a b && python -m snakemake --mode remote"]
    assert job.spec.ttl_seconds_after_finished == 600
    assert job.spec.active_deadline_seconds == 1440 * 60 + 30 + 60
    assert [v.empty_dir.medium for v in job.spec.template.spec.volumes if v.name == "dshm"] == ["Memory"]


def test_a_job_that_would_still_install_packages_is_refused():
    with pytest.raises(PodSpecError, match="installs packages at start"):
        patch_job(stock_job("python -m snakemake a && pip install torch && python -m snakemake b"))


def test_files_the_archive_lacks_are_named_with_the_fix(tmp_path):
    runs = {"r": RunSettings(model_definition={"sources": {"my_task.py": "0", "helpers/aug.py": "1"}})}
    needed = needed_by_jobs(runs, REPO, REPO)
    assert "scripts/train_segment.py" in needed and "segtrain/runner.py" in needed
    assert "segtrain/schemas/config.schema.yaml" in needed  # a job's Snakemake reads the config with it
    shipped = [f for f in needed if f != "helpers/aug.py"]
    missing = missing_from_archive(shipped, needed)
    assert list(missing) == ["helpers/aug.py"]
    text = refusal(missing, REPO)  # REPO is a git work tree
    assert "helpers/aug.py  (needed by run 'r')" in text and "Fix: git add helpers/aug.py" in text
    assert "not a git repository" in refusal(missing, tmp_path)
