"""Run a Job's container as a pod would: its exact command and environment, as PID 1 of a fresh
PID namespace, in an empty working directory, with only the image's environment and the volume.

What differs from a real node, and why it does not matter here: the "image" is this machine's
virtual environment (the Containerfile installs the same packages), and the volume is a folder
that the test's storage prefix and checkpoint_root already name by its absolute path.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

GRACE = 30.0  # Kubernetes' default terminationGracePeriodSeconds, as on DSRI


def unshare_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run([*unshare_prefix(), "true"], capture_output=True)
    return probe.returncode == 0


def unshare_prefix() -> list[str]:
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user", "--mount"]
    return prefix


def image_env(home: Path) -> dict[str, str]:
    """What the Containerfile's image sets: its Python first on PATH, a writable HOME and caches.
    Nothing of the test process leaks in (no PYTHONPATH, no SEGTRAIN_*, no USER)."""
    bindir = str(Path(sys.executable).parent)
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "SEGTRAIN_IMAGE_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1",
            "XDG_CACHE_HOME": str(home / ".cache"), "MPLCONFIGDIR": str(home / ".cache/matplotlib")}


class Pod:
    def __init__(self, job: dict, secrets: dict, root: Path):
        name = job["metadata"]["name"]
        spec = job["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        self.job, self.name = job, name
        self.workdir = root / name / "workdir"  # the Job's emptyDir at /workdir: empty at start
        self.workdir.mkdir(parents=True)
        env = image_env(root / name / "home")
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
            elif "valueFrom" in e:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = base64.b64decode(secrets[ref["name"]][ref["key"]]).decode()
        self.command = list(container.get("command") or []) + list(container.get("args") or [])
        self.log = root / name / "pod.log"
        self.started = time.time()
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([*unshare_prefix(), *self.command], cwd=self.workdir, env=env,
                                         stdout=out, stderr=subprocess.STDOUT)
        self.stop_sent: float | None = None
        self.ended: float | None = None

    def pid1(self) -> int:
        """The container's PID 1 (the child of unshare), as the host sees it."""
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except FileNotFoundError:
                children = []
            if children:
                return int(children[0])
            time.sleep(0.01)
        raise AssertionError("the pod's PID 1 did not start")

    def poll(self):
        code = self.proc.poll()
        if code is not None and self.ended is None:
            self.ended = time.time()
        return code

    def stop(self, grace: float = GRACE) -> None:
        """What the kubelet does to a deleted Job's pod or at a booking's end: SIGTERM to PID 1 only,
        SIGKILL to everything once the grace period has passed."""
        self.stop_sent = time.time()
        os.kill(self.pid1(), signal.SIGTERM)

        def kill_after_grace():
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(self.pid1(), signal.SIGKILL)  # PID 1 gone: the kernel kills the namespace

        threading.Thread(target=kill_after_grace, daemon=True).start()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Kubelet:
    """Runs each Job the stand-in API server receives as a Pod (see k8s_standin.StandIn)."""

    def __init__(self, root: Path):
        self.root, self.pods = root, []

    def __call__(self, job: dict, secrets: dict) -> Pod:
        pod = Pod(job, secrets, self.root)
        self.pods.append(pod)
        return pod
