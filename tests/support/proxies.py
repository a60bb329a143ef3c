"""A relay between the listener and ZooKeeper that delays bytes and reads the requests."""

from __future__ import annotations

import socket
import struct
import threading
import time

# The opcodes of ZooKeeper's create requests, as ZooKeeperLink.requests lists them.
CREATE_OPCODES = {1, 15}  # create, create2


class ZooKeeperLink:
    """A TCP relay from the listener to ZooKeeper that delays every byte by ``delay``
    seconds each way (a slow or distant server) and records each request the client
    sends, read from ZooKeeper's length-prefixed frames: ``(monotonic time, opcode)``."""

    PING, AUTH, SET_WATCHES, CLOSE = 11, 100, 101, -11
    DELETE, EXISTS = 2, 3

    def __init__(self, target_port: int, delay: float = 0.0,
                 request_delay: float | None = None) -> None:
        self.target_port = target_port
        self.delay = delay  # server -> client
        self.request_delay = delay if request_delay is None else request_delay
        self.requests: list[tuple[float, int]] = []
        self._refuse: dict[int, list] = {}  # opcode -> [error code, replies left to refuse]
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._flowing = threading.Event()
        self._flowing.set()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def work_requests(self, start: float, end: float) -> int:
        """Requests other than pings, auth, watch re-arming and session close in [start, end)."""
        idle = {self.PING, self.AUTH, self.SET_WATCHES, self.CLOSE}
        return sum(1 for t, op in list(self.requests) if start <= t < end and op not in idle)

    def refuse(self, opcode: int, error: int, count: int = 1, carried_out: bool = True) -> None:
        """Answer the next ``count`` requests with ``opcode`` with ZooKeeper error
        ``error`` (e.g. -127, throttled) instead of the server's reply.  The server
        still carries the request out: for a read that is a refusal, for a write
        it is a lost reply.  ``carried_out=False`` (a delete): the server gets an
        ``exists`` of the same path instead, so nothing changes, as when ZooKeeper
        itself throttles the delete, and its reply comes in the order kazoo awaits."""
        if not carried_out and opcode != self.DELETE:
            raise ValueError("only a delete can be refused without being carried out")
        self._refuse[opcode] = [error, count, carried_out]

    def stall(self) -> None:
        """Stop delivering bytes either way while every connection stays open: a
        network partition that drops packets, as opposed to a refused connection."""
        self._flowing.clear()

    def drop(self) -> None:
        """Close every open connection (replies in flight are lost); new ones are accepted."""
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._server.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                continue
            self._sockets += [client, upstream]
            refused: dict[int, int] = {}  # xid -> the error its reply gets (xids restart
            for src, dst, parse in ((client, upstream, True),  # with each connection)
                                    (upstream, client, False)):
                queue: list = []
                ready = threading.Condition()
                threading.Thread(target=self._read, args=(src, queue, ready, parse, refused),
                                 daemon=True).start()
                threading.Thread(target=self._write, args=(dst, queue, ready),
                                 daemon=True).start()

    def _read(self, src, queue, ready, parse, refused: dict[int, int]) -> None:
        """Relay ``src`` to its writer: requests (``parse``) as they come, read for
        their opcodes; replies frame by frame, so that one can be refused."""
        buffer, first = b"", True
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            now = time.monotonic()
            buffer += chunk
            out = b""
            while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack(">i", buffer[:4])[0]:
                size = struct.unpack(">i", buffer[:4])[0]
                frame, buffer = buffer[4:4 + size], buffer[4 + size:]
                if first:
                    first = False  # ConnectRequest / ConnectResponse: no xid
                elif parse and len(frame) >= 8:
                    xid, opcode = struct.unpack(">ii", frame[:8])
                    self.requests.append((now, opcode))
                    rule = self._refuse.get(opcode)
                    if rule and rule[1] > 0:
                        rule[1] -= 1
                        refused[xid] = rule[0]
                        if not rule[2]:  # DeleteRequest (path, version) -> ExistsRequest
                            (length,) = struct.unpack(">i", frame[8:12])
                            path = frame[12:12 + length]
                            frame = struct.pack(f">iii{length}s?", xid, self.EXISTS, length,
                                                path, False)
                elif not parse and len(frame) >= 16:
                    xid, zxid = struct.unpack(">iq", frame[:12])
                    error = refused.pop(xid, None)
                    if error is not None:  # the reply header alone, with the error
                        frame = struct.pack(">iqi", xid, zxid, error)
                out += struct.pack(">i", len(frame)) + frame
            if out or not chunk:  # an empty chunk tells the writer the end came
                with ready:
                    queue.append((now + (self.request_delay if parse else self.delay), out))
                    ready.notify()
            if not chunk:
                return

    def _write(self, dst, queue, ready) -> None:
        while True:
            with ready:
                ready.wait_for(lambda: queue)
                due, chunk = queue.pop(0)
            time.sleep(max(0.0, due - time.monotonic()))
            self._flowing.wait()
            if self._closed:
                return
            try:
                if not chunk:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(chunk)
            except OSError:
                return
