"""A stand-in Kubernetes API server on loopback that records what a client submits.

It answers the few calls snakemake-executor-plugin-kubernetes makes (secrets, jobs, job status,
pods, logs). The Job objects themselves are built by the real plugin; this records them. Without a
``kubelet`` every Job is reported failed, so Snakemake stops after its first wave of jobs. With
one (tests/pod.py), each Job's container really runs, and its status is that process's: active,
then succeeded or failed; deleting a running Job stops its pod as Kubernetes does.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class StandIn:
    def __init__(self, kubelet=None):
        self.jobs: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        self.secrets: dict[str, dict] = {}
        self.kubelet = kubelet
        self.pods: dict[str, object] = {}  # Job name -> the running pod (tests/pod.py)
        standin = self

        def job_status(name: str) -> dict:
            pod = standin.pods.get(name)
            if pod is None:
                return {"failed": 1}
            code = pod.poll()
            return {"active": 1} if code is None else {"succeeded": 1} if code == 0 else {"failed": 1}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"{}")

            def do_POST(self):
                standin.requests.append(("POST", self.path))
                body = self._body()
                if re.search(r"/apis/batch/v1/namespaces/[^/]+/jobs$", self.path):
                    standin.jobs.append(body)
                    if standin.kubelet is not None:
                        standin.pods[body["metadata"]["name"]] = standin.kubelet(body, standin.secrets)
                elif re.search(r"/api/v1/namespaces/[^/]+/secrets$", self.path):
                    standin.secrets[body["metadata"]["name"]] = body.get("data") or {}
                body.setdefault("metadata", {}).setdefault("uid", "0")
                self._send(201, body)

            def do_GET(self):
                standin.requests.append(("GET", self.path))
                m = re.search(r"/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)/status", self.path)
                if m:
                    self._send(200, {"apiVersion": "batch/v1", "kind": "Job",
                                     "metadata": {"name": m.group(2), "namespace": m.group(1)},
                                     "status": job_status(m.group(2))})
                elif "/log" in self.path:
                    data = b"stand-in: no logs\n"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                elif "/pods" in self.path:
                    self._send(200, {"apiVersion": "v1", "kind": "PodList", "items": []})
                else:
                    self._send(404, {"kind": "Status", "code": 404})

            def do_DELETE(self):
                standin.requests.append(("DELETE", self.path))
                pod = standin.pods.get(self.path.split("?")[0].rstrip("/").split("/")[-1])
                if pod is not None and pod.poll() is None:
                    pod.stop()  # a deleted Job's pod gets SIGTERM, then SIGKILL after the grace
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": "stand-in"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "u"}}],
        }))
        return path

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
