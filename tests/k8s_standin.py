"""A stand-in Kubernetes API server on loopback that records what a client submits.

It answers the few calls snakemake-executor-plugin-kubernetes makes (secrets, jobs, job status,
pods, logs) and reports every Job as failed, so Snakemake stops after its first wave of jobs.
The Job objects themselves are built by the real plugin; this only records them.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class StandIn:
    def __init__(self):
        self.jobs: list[dict] = []
        self.requests: list[tuple[str, str]] = []
        standin = self

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
                body.setdefault("metadata", {}).setdefault("uid", "0")
                self._send(201, body)

            def do_GET(self):
                standin.requests.append(("GET", self.path))
                m = re.search(r"/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)/status", self.path)
                if m:
                    self._send(200, {"apiVersion": "batch/v1", "kind": "Job",
                                     "metadata": {"name": m.group(2), "namespace": m.group(1)},
                                     "status": {"failed": 1}})
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
