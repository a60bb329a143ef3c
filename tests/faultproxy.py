"""A TCP proxy on 127.0.0.1 whose link can be cut and restored, to fault the
connection between the listener and a real ZooKeeper server."""

from __future__ import annotations

import selectors
import socket
import threading

from zkwatcher_supervisor.sandbox import free_port


class FaultProxy:
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
        self._closed = False
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

    def restore(self) -> None:
        self.accepting = True

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
            s.close()

    def _loop(self) -> None:
        while not self._closed:
            try:
                events = self._selector.select(0.1)
            except (OSError, ValueError):
                return
            with self._lock:
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
            a.setblocking(False)
            self._peers[a] = b
            self._selector.register(a, selectors.EVENT_READ, "peer")

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
        try:
            self._peers[sock].setblocking(True)
            self._peers[sock].sendall(data)
            self._peers[sock].setblocking(False)
        except OSError:
            self._drop(sock)
