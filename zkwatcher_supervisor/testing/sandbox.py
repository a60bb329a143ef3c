"""Throwaway local ZooKeeper and supervisord, for the demo, the tests and bench/.

Both run as real servers on 127.0.0.1 under a scratch directory: ZooKeeper from
Debian's ``zookeeper`` package (``apt-get install zookeeper``), supervisord from
the ``supervisor`` Python package.  Nothing here is used by the listener itself.
"""

from __future__ import annotations

import ctypes
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import xmlrpc.client
from datetime import datetime
from pathlib import Path
from typing import Callable

from supervisor.xmlrpc import SupervisorTransport

# slf4j-simple (Debian's libslf4j-java, a zookeeper dependency) makes ZooKeeper's
# own warnings and errors reach zookeeper.log instead of vanishing.  The Netty
# codec and resolver jars are missing from zookeeper.jar's manifest, and the
# Netty connection factory (needed for TLS) cannot start without them.
ZOOKEEPER_CLASSPATH = ":".join([
    "/etc/zookeeper/conf",
    "/usr/share/java/zookeeper.jar",
    "/usr/share/java/slf4j-simple.jar",
    "/usr/share/java/netty-codec.jar",
    "/usr/share/java/netty-resolver.jar",
    "/usr/share/java/netty-transport-native-unix-common.jar",
])
ZOOKEEPER_MAIN = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: nothing may be imported after fork
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: get SIGKILL when the process that started us dies,
    so a killed test run or benchmark leaves no server behind.  (Linux ties this
    to the starting *thread*: start servers from the main thread.)"""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy, else raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g}s")
        time.sleep(interval)


def log_time(read_log: Callable[[], str], message: str, after: float = 0.0,
             timeout: float = 5.0) -> float:
    """Wall-clock time of the first line of a listener log (as ``read_log``
    returns it) that contains ``message`` and was made at or after ``after``.
    Waits for it: the listener writes its log a moment after the fact."""
    def find() -> float | None:
        for line in read_log().splitlines():
            if message in line:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if stamp >= after:
                    return stamp
        return None
    return wait_until(find, timeout, what=f"{message!r} logged")


def four_letter_word(port: int, word: str, timeout: float = 2.0) -> str:
    """Send a ZooKeeper four-letter command (ruok, mntr, ...) and return the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(word.encode())
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks).decode()
            chunks.append(chunk)


class LocalZooKeeper:
    """A standalone ZooKeeper server (or one member of a local ensemble)."""

    def __init__(self, workdir: Path, port: int | None = None, tick_ms: int = 500) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.tick_ms = tick_ms
        self.process: subprocess.Popen | None = None
        self.servers: list[tuple[int, int, int]] = []  # ensemble: (myid, peer, election)
        self.myid = 0
        self.extra_config: list[str] = []  # more zoo.cfg lines (e.g. TLS settings)
        self.jvm_options: list[str] = []  # e.g. -Djava.security.auth.login.config=...

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_ms}",
            f"dataDir={data}",
            f"clientPort={self.port}",
            "clientPortAddress=127.0.0.1",
            "initLimit=10",
            "syncLimit=5",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            # Let tests expire sessions quickly, and let them ask for long ones:
            # without this ZooKeeper caps every session at 20 ticks (10 s).
            f"minSessionTimeout={2 * self.tick_ms}",
            "maxSessionTimeout=60000",
        ]
        lines += self.extra_config
        for myid, peer, election in self.servers:
            lines.append(f"server.{myid}=127.0.0.1:{peer}:{election}")
        if self.servers:
            (data / "myid").write_text(f"{self.myid}\n")
        config = self.workdir / "zoo.cfg"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self, wait: bool = True, timeout: float = 60.0) -> LocalZooKeeper:
        if shutil.which("java") is None or not Path("/usr/share/java/zookeeper.jar").exists():
            raise RuntimeError("ZooKeeper is not installed: run 'apt-get install -y zookeeper'")
        config = self._write_config()
        with open(self.workdir / "zookeeper.log", "ab") as log:
            self.process = subprocess.Popen(
                ["java", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                 "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", *self.jvm_options,
                 "-cp", ZOOKEEPER_CLASSPATH,
                 ZOOKEEPER_MAIN, str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        if wait:
            try:
                self.wait_ready(timeout)
            except BaseException:
                self.kill()
                raise
        return self

    def is_serving(self) -> bool:
        try:
            return four_letter_word(self.port, "ruok", timeout=0.5) == "imok" and (
                "This ZooKeeper instance is not currently serving"
                not in four_letter_word(self.port, "srvr", timeout=0.5)
            )
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited; see {self.workdir / 'zookeeper.log'}")
            return self.is_serving()

        wait_until(ready, timeout, interval=0.1, what=f"ZooKeeper on port {self.port}")

    def mode(self) -> str:
        """"leader", "follower" or "standalone" as the server says; "down" if it does not answer."""
        try:
            text = four_letter_word(self.port, "srvr", 1.0)
        except OSError:
            return "down"
        found = re.search(r"^Mode: (\w+)", text, re.M)
        return found.group(1) if found else "down"

    def mntr(self) -> dict[str, str]:
        text = four_letter_word(self.port, "mntr")
        return dict(line.split("\t", 1) for line in text.splitlines() if "\t" in line)

    def session_timeouts(self) -> dict[int, int]:
        """Negotiated timeout in ms of every session connected to this server, by
        session id (from the ``cons`` command)."""
        timeouts = {}
        for line in four_letter_word(self.port, "cons").splitlines():
            sid = re.search(r"\bsid=0x([0-9a-f]+)", line)
            timeout = re.search(r"\bto=(\d+)", line)
            if sid and timeout:
                timeouts[int(sid.group(1), 16)] = int(timeout.group(1))
        return timeouts

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


SUPERVISORD_CONF = """\
[unix_http_server]
file={workdir}/supervisor.sock
{credentials}
[supervisord]
logfile={workdir}/supervisord.log
pidfile={workdir}/supervisord.pid
childlogdir={workdir}
loglevel={loglevel}
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{workdir}/supervisor.sock
{credentials}
"""


RECORD_TERM = """\
import signal, sys, time
def stop(*_):
    with open(sys.argv[1], "w") as out:
        out.write(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(1)
"""


def term_recorder(name: str, directory: Path) -> str:
    """A supervisord program ``name`` that, sent SIGTERM, writes the moment
    (``time.time()``) to ``directory/<name>.term`` and exits 0."""
    script = Path(directory) / "record_term.py"
    script.write_text(RECORD_TERM)
    return textwrap.dedent(f"""
        [program:{name}]
        command = {sys.executable} {script} {directory}/{name}.term
        startsecs = 0
        """)


def local_ensemble(workdir: Path, size: int = 3) -> list[LocalZooKeeper]:
    """The members of one ensemble on 127.0.0.1, configured but not started."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]
    members = []
    for myid, (client, _, _) in enumerate(ports, start=1):
        member = LocalZooKeeper(Path(workdir) / f"zk{myid}", port=client)
        member.servers = [(i, peer, election) for i, (_, peer, election) in
                          enumerate(ports, start=1)]
        member.myid = myid
        members.append(member)
    return members


class LocalSupervisord:
    """A supervisord in the foreground with its own socket, logs and the given sections.
    With a ``username`` and ``password`` its socket wants them, and its config's
    [supervisorctl] section holds them (as supervisorctl is set up)."""

    def __init__(self, workdir: Path, sections: str, loglevel: str = "info",
                 username: str | None = None, password: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "supervisord.conf"
        self.username, self.password = username, password
        credentials = (f"username={username}\npassword={password}\n"
                       if username is not None else "")
        self.config.write_text(
            SUPERVISORD_CONF.format(workdir=self.workdir, loglevel=loglevel,
                                    credentials=credentials) + sections
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> LocalSupervisord:
        with open(self.workdir / "supervisord.out", "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )

        def answering() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"supervisord exited; see {self.workdir}/supervisord.log")
            try:
                return self.rpc().supervisor.getState()["statename"] == "RUNNING"
            except (OSError, xmlrpc.client.Fault):
                return False

        wait_until(answering, timeout, interval=0.05, what="supervisord")
        return self

    def rpc(self) -> xmlrpc.client.ServerProxy:
        transport = SupervisorTransport(self.username, self.password,
                                        f"unix://{self.workdir}/supervisor.sock")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(self.config), *args],
            capture_output=True, text=True, timeout=60,
        )

    def info(self, name: str) -> dict:
        return self.rpc().supervisor.getProcessInfo(name)

    def log_text(self) -> str:
        path = self.workdir / "supervisord.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def busy_periods(self, listener: str = "zkwatcher") -> list[float]:
        """Seconds ``listener`` spent BUSY on each event (needs loglevel debug)."""
        periods, started = [], None
        for line in self.log_text().splitlines():
            if line.endswith(f"sent to listener {listener}"):
                started = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            elif f"{listener}: BUSY -> " in line and started is not None:
                ended = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                periods.append((ended - started).total_seconds())
                started = None
        return periods

    def stop(self, timeout: float = 20.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class FaultProxy:
    """A TCP proxy on 127.0.0.1 whose link can be cut and restored, to fault the
    connection between a client and a real ZooKeeper server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self.accepting = True
        self._frozen = False
        self._closed = False
        # Sockets to the server, those of them that have not answered yet, and
        # when the newest connection got its first answer (ZooKeeper's
        # ConnectResponse: the moment a client holds a session again), in
        # time.monotonic().
        self._upstream: set[socket.socket] = set()
        self._unanswered: set[socket.socket] = set()
        self.answered_at: float | None = None
        # Messages each client has sent, and how many logins are still to be cut.
        self._sent: dict[socket.socket, int] = {}
        self._logins_to_cut = 0
        self.logins_cut = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until :meth:`restore`."""
        with self._lock:
            self.accepting = False
            for sock in list(self._peers):
                self._drop(sock)

    def freeze(self) -> None:
        """Stop forwarding without closing anything, as a silent network partition
        does: both ends only find out by their own timeouts.  New connections
        are accepted and stall too.  :meth:`restore` resumes forwarding."""
        with self._lock:
            self._frozen = True

    def cut_logins(self, count: int = 1) -> None:
        """Cut each of the next ``count`` connections as its client sends its second
        message, the first after ZooKeeper's ConnectResponse: the session is
        re-established, and a SASL client is cut in the middle of its login."""
        with self._lock:
            self._logins_to_cut += count

    def restore(self) -> None:
        with self._lock:
            self._frozen = False
            self.accepting = True

    @property
    def frozen(self) -> bool:
        return self._frozen

    def answered_connections(self) -> int:
        """Open connections on which the server has answered at least once."""
        with self._lock:
            return len(self._upstream - self._unanswered)

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._server.close()

    def _drop(self, sock: socket.socket) -> None:
        peer = self._peers.pop(sock, None)
        for s in (sock, peer):
            if s is None:
                continue
            self._peers.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            self._upstream.discard(s)
            self._unanswered.discard(s)
            self._sent.pop(s, None)
            s.close()

    def _loop(self) -> None:
        while not self._closed:
            if self._frozen:
                # Leave whatever arrives in the kernel's buffers.
                time.sleep(0.02)
                continue
            try:
                events = self._selector.select(0.1)
            except (OSError, ValueError):
                return
            with self._lock:
                if self._frozen:
                    continue
                for key, _ in events:
                    if key.data is None:
                        self._accept()
                    elif key.fileobj in self._peers:
                        self._forward(key.fileobj)

    def _accept(self) -> None:
        try:
            client, _ = self._server.accept()
        except OSError:
            return
        if not self.accepting:
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
        except OSError:
            client.close()
            return
        for a, b in ((client, upstream), (upstream, client)):
            # Forward each write at once, as both ends send it: Nagle's wait for
            # an ACK (delayed by the other side) would add ~40 ms per exchange.
            a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            a.setblocking(False)
            self._peers[a] = b
            self._selector.register(a, selectors.EVENT_READ, "peer")
        self._upstream.add(upstream)
        self._unanswered.add(upstream)
        self._sent[client] = 0

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        if sock in self._unanswered:
            self._unanswered.discard(sock)
            self.answered_at = time.monotonic()
        if sock in self._sent:
            self._sent[sock] += 1
            if self._sent[sock] == 2 and self._logins_to_cut > 0:
                self._logins_to_cut -= 1
                self.logins_cut += 1
                self._drop(sock)
                return
        try:
            self._peers[sock].setblocking(True)
            self._peers[sock].sendall(data)
            self._peers[sock].setblocking(False)
        except OSError:
            self._drop(sock)
