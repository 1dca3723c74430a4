"""What a Kubernetes Job of this workflow needs beyond what the stock executor plugin writes.

``snakemake-executor-plugin-kubernetes`` builds a Job that runs ``/bin/sh -c "pip install ... &&
python -m snakemake ..."``. On a real cluster (DSRI included) that Job

- never passes SIGTERM on to training: dash as PID 1 drops it, so a stopped pod dies without its
  save 30 s later;
- needs the package registry at start (``pip install`` of the storage plugin), which GPU nodes
  may not reach;
- sets no ``ttlSecondsAfterFinished`` (DSRI's job guideline asks for it), no ``/dev/shm`` beyond
  the runtime's 64 MB (DataLoader workers and NCCL need more), no time limit although the rule
  has a ``runtime``, and no ``USER`` (Snakemake asks for a user name; OpenShift's arbitrary UID
  may have no passwd entry).

``patch_job`` fixes all of these on the Job object the stock plugin built, just before it is
submitted; ``snakemake_executor_plugin_dsri`` (plugins/) is the stock plugin with this patch.
"""

from __future__ import annotations

import re
import shlex

INIT = ["python", "-m", "segtrain.podinit", "--"]
# What the stock plugin runs in front of Snakemake when it installs the storage plugin itself.
PIP_PREFIX = re.compile(r"^\s*pip install [^&]*&&\s*")


class PodSpecError(RuntimeError):
    pass


def job_command(exec_job: str) -> str:
    """The job's shell command, refused if it would need the package registry at start."""
    command = PIP_PREFIX.sub("", exec_job)
    if re.search(r"(^|[;&|]\s*)(pip|pip3|python -m pip) install\b", command):
        raise PodSpecError(
            "the Job's command installs packages at start, which nodes without internet cannot do: "
            f"{command[:200]}... Put everything in the image (Containerfile).")
    return command


def patch_job(body, runtime_minutes: float | None = None, ttl_seconds: int = 3600, shm_mb: int = 8192,
              grace_seconds: int | None = None):
    """Make the Job built by the stock plugin fit the real pod lifecycle (see the module docstring).

    ``body`` is a ``kubernetes.client.V1Job``. ``runtime_minutes`` becomes activeDeadlineSeconds (plus
    the grace period): Kubernetes then stops a hung job as a SLURM walltime would, with SIGTERM first.
    """
    from kubernetes import client

    pod = body.spec.template.spec
    (container,) = pod.containers
    if container.command != ["/bin/sh"] or len(container.args or []) != 2 or container.args[0] != "-c":
        raise PodSpecError(f"unexpected container command from the executor plugin: {container.command} "
                           f"{(container.args or [])[:1]}; this patch knows /bin/sh -c COMMAND only")
    container.command = INIT + ["/bin/sh"]
    container.args = ["-c", job_command(container.args[1])]

    body.spec.ttl_seconds_after_finished = int(ttl_seconds)
    if grace_seconds is not None:
        pod.termination_grace_period_seconds = int(grace_seconds)
    if runtime_minutes:
        grace = pod.termination_grace_period_seconds or 30
        body.spec.active_deadline_seconds = int(runtime_minutes * 60) + grace + 60

    pod.volumes = [v for v in (pod.volumes or []) if v.name != "dshm"] + [
        client.V1Volume(name="dshm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=f"{shm_mb}Mi"))]
    container.volume_mounts = [m for m in (container.volume_mounts or []) if m.mount_path != "/dev/shm"] + [
        client.V1VolumeMount(name="dshm", mount_path="/dev/shm")]

    env = list(container.env or [])
    named = {e.name for e in env}
    for name, value in (("USER", "segtrain"), ("LOGNAME", "segtrain"), ("PYTHONUNBUFFERED", "1")):
        if name not in named:
            env.append(client.V1EnvVar(name=name, value=value))
    container.env = env
    return body


def describe(body) -> str:
    """One line for the log: what the patch made of the Job."""
    spec = body.spec
    container = spec.template.spec.containers[0]
    return (f"Job {body.metadata.name}: {shlex.join(container.command)} ...; ttlSecondsAfterFinished="
            f"{spec.ttl_seconds_after_finished}, activeDeadlineSeconds={spec.active_deadline_seconds}, /dev/shm "
            "in memory")
