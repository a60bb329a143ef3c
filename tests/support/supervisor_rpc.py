"""Stand-ins for supervisord: its XML-RPC interface, and programs as our children."""

from __future__ import annotations

import subprocess
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeSupervisorRPC:
    """supervisord's XML-RPC interface on 127.0.0.1, answering ``getAllProcessInfo`` with
    whatever the test set, after ``delay`` seconds: a supervisord too busy to answer at
    once.  Each call's arrival and answer times are recorded."""

    def __init__(self) -> None:
        self.processes: list[dict] = []
        self.delay = 0.0
        self.calls: list[dict] = []  # {"method", "received", "answered"}
        rpc = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                _, method = xmlrpc.client.loads(body)
                call = {"method": method, "received": time.monotonic(), "answered": None}
                rpc.calls.append(call)
                snapshot, delay = [dict(p) for p in rpc.processes], rpc.delay
                if method == "supervisor.getAllProcessInfo":
                    time.sleep(delay)
                    reply = xmlrpc.client.dumps((snapshot,), methodresponse=True)
                else:
                    reply = xmlrpc.client.dumps(xmlrpc.client.Fault(1, "UNKNOWN_METHOD"),
                                                methodresponse=True)
                data = reply.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                call["answered"] = time.monotonic()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def set_process(self, group: str, name: str, state: str, pid: int) -> None:
        codes = {"STOPPED": 0, "STARTING": 10, "RUNNING": 20, "BACKOFF": 30, "STOPPING": 40,
                 "EXITED": 100, "FATAL": 200, "UNKNOWN": 1000}
        now = int(time.time())
        self.processes = [{
            "name": name, "group": group, "description": f"pid {pid}" if pid else "",
            "start": now, "stop": 0, "now": now, "state": codes[state], "statename": state,
            "spawnerr": "", "exitstatus": 0, "logfile": "/dev/null",
            "stdout_logfile": "/dev/null", "stderr_logfile": "", "pid": pid,
        }]

    def calls_of(self, method: str) -> list[dict]:
        return [c for c in self.calls if c["method"] == method]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def program_processes() -> Iterator:
    """Start stand-ins for supervisord's programs as children of this process (the
    listener's parent, as supervisord is for both); all are killed at the end."""
    started: list[subprocess.Popen] = []

    def start() -> int:
        proc = subprocess.Popen(["sleep", "100000"], stdin=subprocess.DEVNULL)
        started.append(proc)
        return proc.pid

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()
            proc.wait()
