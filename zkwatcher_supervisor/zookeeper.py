"""The kazoo client we connect with: hosts, session timeout, credentials, TLS
and a spread-out reconnect; how to say why it could not connect, and when to
try again after a failed login.

Used by the registry's worker (:mod:`.registry`) and by the one-shot reads of
the commands (:mod:`.znode_reads`); each makes its own clients.
"""

from __future__ import annotations

import errno
import logging
import random
import select
import ssl
import threading
from collections.abc import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import AuthFailedError, ConnectionDropped
from kazoo.handlers.threading import SequentialThreadingHandler
from kazoo.retry import KazooRetry
from kazoo.security import CREATOR_ALL_ACL, READ_ACL_UNSAFE, make_acl

from .backoff import backoff
from .config import TLSSettings, ZooKeeperSettings
from .tls import client_context, refusal_reason

log = logging.getLogger(__name__)

# After ZooKeeper refused our SASL credentials kazoo stops connecting; we open
# a new connection this long after the first refusal, doubling to
# MAX_REOPEN_DELAY (one server of an ensemble may be the one that refuses).
REOPEN_DELAY = 2.0
MAX_REOPEN_DELAY = 30.0
# kazoo stops as well when the connection merely drops during the SASL login
# (a server restarting, a network blip); then we reconnect as kazoo itself
# would after a drop: at once, then a little slower, up to MAX_DROP_DELAY.
DROP_DELAY = 0.1
MAX_DROP_DELAY = 0.5


class ZooKeeperHandler(SequentialThreadingHandler):
    """kazoo's threading handler, with our TLS and a spread-out reconnect.

    TLS: kazoo hands ``create_connection`` the host name from ``hosts``; the
    connection is wrapped in our own context (see :mod:`.tls`), so the name
    is checked against the server's certificate (an address against its IP
    SANs) and only ``ca`` is trusted when set.  A refused certificate is
    logged once per server and reason, not on every attempt.

    Spread: the first connection after a session expired waits a random
    0..``spread`` seconds.  When a whole fleet loses the ensemble for longer
    than its session timeout, every host learns of the expiry in the same
    second the ensemble is back, and would open its new session (and
    re-create all its nodes) in that same second.  The wait runs on kazoo's
    connection thread, where kazoo sleeps between its own retries;
    :meth:`session_expired`, called from the state listener, only draws the
    number.
    """

    def __init__(self, spread: float, tls: TLSSettings | None = None) -> None:
        super().__init__()
        self.spread = spread
        self.last_delay: float | None = None  # the most recent wait, for logs and tests
        self._delay = 0.0
        self._cancel = threading.Event()
        self.tls = tls
        self._context = client_context(tls) if tls is not None else None
        # Servers whose certificate we refused, and why; a good handshake clears it.
        self.refusals: dict[tuple[str, int], str] = {}
        self.on_refusal: Callable[[], None] = lambda: None  # a new refusal (kazoo's thread)

    def session_expired(self) -> float:
        """Make the next connection wait; returns the wait drawn."""
        self._delay = random.uniform(0.0, self.spread) if self.spread > 0 else 0.0
        return self._delay

    def create_connection(self, address, hostname=None, timeout=None, **kazoo_tls):
        delay, self._delay = self._delay, 0.0
        if delay > 0:
            self.last_delay = delay
            if self._cancel.wait(delay):
                # Stopping: fail this attempt rather than open a session to close.
                raise OSError(errno.ECANCELED, "client stopping")
        if self._context is None:
            return super().create_connection(address, hostname=hostname, timeout=timeout,
                                             **kazoo_tls)
        # kazoo's plain TCP connect (its timeout and socket options), then our TLS.
        sock = super().create_connection(address, timeout=timeout)
        name = hostname or address[0]
        try:
            return self._handshake(sock, name, address[1])
        except BaseException:
            sock.close()
            raise

    def _handshake(self, sock, name: str, port: int):
        try:
            wrapped = self._context.wrap_socket(sock, server_hostname=name)
        except ssl.SSLCertVerificationError as exc:
            reason = refusal_reason(exc, self.tls)
            if self.refusals.get((name, port)) != reason:
                self.refusals[(name, port)] = reason
                log.error("ZooKeeper %s:%d: TLS certificate refused: %s; not connecting to "
                          "this server", name, port, reason)
                self.on_refusal()
            raise
        self.refusals.pop((name, port), None)
        return wrapped

    def select(self, rlist, wlist, xlist, timeout=None):
        """kazoo's select, in one poll() call.

        kazoo's own builds and closes an epoll selector on every call, and its
        connection thread calls it two or three times per request and per
        reply: at start-up, with a thousand nodes to create, that thread's
        CPU went mostly there, taken from the event loop's (one GIL).  poll,
        unlike select(), takes fds of any number.  As kazoo's: an error or
        hang-up reports the fd readable (and writable), so the read or write
        that follows raises it.
        """
        poller = select.poll()
        masks: dict[int, int] = {}
        for objects, mask in ((rlist, select.POLLIN), (wlist, select.POLLOUT)):
            for fileobj in objects:
                fd = _fd(fileobj)
                masks[fd] = masks.get(fd, 0) | mask
        for fd, mask in masks.items():
            poller.register(fd, mask)
        ready = dict(poller.poll(None if timeout is None else max(0.0, timeout) * 1000))
        if any(events & select.POLLNVAL for events in ready.values()):
            raise ValueError("Invalid event mask or fd")  # as kazoo's, for a closed fd
        return ([fileobj for fileobj in rlist if ready.get(_fd(fileobj), 0) & ~select.POLLOUT],
                [fileobj for fileobj in wlist if ready.get(_fd(fileobj), 0) & ~select.POLLIN],
                [])

    def start(self) -> None:
        self._cancel.clear()
        super().start()

    def stop(self) -> None:
        self._cancel.set()
        super().stop()


def _fd(fileobj) -> int:
    fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
    if fd < 0:
        raise ValueError("Invalid event mask or fd")
    return fd


class _KazooLog(logging.LoggerAdapter):
    """kazoo's client log, less what we say better ourselves, once: kazoo
    repeats a refused certificate on every connection attempt (two a second),
    and a refused SASL login on every new connection.

    It also keeps the error that made kazoo give up with AUTH_FAILED: kazoo
    says why only in its log (the state listener hears AUTH_FAILED for a
    refused login and for a connection that dropped during it alike)."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__(logger, {})
        self.auth_failure: AuthFailedError | None = None

    def log(self, level, msg, *args, **kwargs) -> None:
        for arg in args:
            if isinstance(arg, AuthFailedError):
                self.auth_failure = arg
                return
            if isinstance(arg, BaseException) and isinstance(
                    arg.__context__, ssl.SSLCertVerificationError):
                return
        super().log(level, msg, *args, **kwargs)


def dropped_during_login(failure: AuthFailedError | None) -> bool:
    """Whether kazoo's AUTH_FAILED was a connection lost mid-login, not a refusal
    (kazoo raises both as AuthFailedError; a drop carries the ConnectionDropped)."""
    return failure is not None and isinstance(failure.__cause__, ConnectionDropped)


class LoginRetry:
    """When to open a new connection after kazoo gave up with AUTH_FAILED.

    Refused logins and logins cut short back off separately, each from its
    own first pause.  Pure: times are passed in; the registry keeps one under
    its lock.
    """

    def __init__(self) -> None:
        self._refusals = 0  # refused logins in a row
        self._drops = 0  # logins cut short in a row
        self._reopen_at: float | None = None
        self.refused = False  # the last login was refused (for status)

    def failed(self, dropped: bool, now: float) -> bool:
        """A login failed (``dropped``: cut short, else refused); returns
        whether it is the first of its kind in a row, the one to log."""
        if dropped:
            self._drops += 1
            delay, first = backoff(self._drops, DROP_DELAY, MAX_DROP_DELAY), self._drops == 1
        else:
            self._refusals += 1
            self.refused = True
            delay = backoff(self._refusals, REOPEN_DELAY, MAX_REOPEN_DELAY)
            first = self._refusals == 1
        self._reopen_at = now + delay
        return first

    def accepted(self) -> None:
        """The server accepted a login: the next failure is a first again."""
        self._refusals = 0
        self._drops = 0

    def wait(self, now: float) -> float | None:
        """Seconds until a new connection is due; None if none is."""
        return None if self._reopen_at is None else max(0.0, self._reopen_at - now)

    def due(self, now: float) -> bool:
        """Whether to open a new connection now (then it is no longer due)."""
        if self._reopen_at is None or self._reopen_at > now:
            return False
        self._reopen_at = None
        return True


def node_acl(settings: ZooKeeperSettings) -> list | None:
    """The ACL of our nodes and of the parent we create for them: our
    credentials may do everything, the world may read (as nd_service_registry
    did); None, kazoo's open default, without [auth]."""
    auth = settings.auth
    if auth is None:
        return None
    if auth.sasl:
        return [make_acl("sasl", auth.user, all=True), *READ_ACL_UNSAFE]
    return CREATOR_ALL_ACL + READ_ACL_UNSAFE


def make_client(settings: ZooKeeperSettings,
                client_id: tuple[int, bytes] | None = None) -> KazooClient:
    """A kazoo client for ``settings``: hosts, session timeout, digest or SASL
    auth, TLS, reconnect spread."""
    options: dict = {}
    auth = settings.auth
    if auth is not None and auth.sasl:
        options["sasl_options"] = {"mechanism": auth.mechanism, "username": auth.user,
                                   "password": auth.password}
    elif auth is not None:
        options["auth_data"] = [("digest", f"{auth.user}:{auth.password}")]
    return KazooClient(
        hosts=settings.hosts,
        timeout=settings.session_timeout,
        # Reconnect for ever, quickly: registrations must come back within a
        # second of the server returning (after an expiry, of the new session,
        # which reconnect_spread may open a little later).
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=0.5),
        # The handler makes the TLS connection; use_ssl only tells kazoo's log.
        handler=ZooKeeperHandler(settings.reconnect_spread, settings.tls),
        use_ssl=settings.tls is not None,
        client_id=client_id,
        logger=_KazooLog(logging.getLogger("kazoo.client")),
        **options,
    )


def refused_credentials(settings: ZooKeeperSettings) -> str:
    """How to say that ZooKeeper refused our login."""
    auth = settings.auth
    if auth is None:
        return "ZooKeeper refused the connection (AUTH_FAILED)"
    mechanism = f"SASL {auth.mechanism}" if auth.sasl else "digest"
    return f"ZooKeeper refused our credentials ([auth] {mechanism}, user {auth.user!r})"


def tls_refusals(handler: ZooKeeperHandler) -> str | None:
    """The certificates ``handler`` refused, as one reason, or None."""
    reasons = sorted(set(list(handler.refusals.values())))  # kazoo's thread adds to it
    return "TLS certificate refused: " + "; ".join(reasons) if reasons else None

