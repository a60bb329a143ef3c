"""Keep ZooKeeper's ephemeral znodes equal to the set we want registered.

The only module that talks to ZooKeeper.  Callers change the wanted set with
:meth:`Registry.update` — a dict update and a wake-up, never a network call —
and a worker thread makes ZooKeeper match it:

* after every (re)connect it re-examines every node it wants or owns, because
  a lost session takes our ephemeral nodes with it and old watches may be gone;
* an ``exists`` watch on each wanted node brings it back if someone deletes it;
* after a crash and quick restart it reattaches to its previous session
  (saved by :mod:`.session_file`), so the nodes it held simply stay;
* a node at our path held by any other session — a zk_watcher still running
  during a migration, a second listener started by mistake — is never
  deleted: we log once, watch it, and register the moment it goes;
* nodes it never created (persistent ones, other sessions') are never written;
* with credentials, a parent whose ACL lets anyone delete (or create) in it
  is named once at start: there our credentials do not protect our nodes;
* a lost connection is one line, its progress one line a minute, and the
  recovery one line (kazoo's own per-attempt warnings are counted into them).

Reads and writes are pipelined with kazoo's async API, PIPELINE_DEPTH at a
time, so a full reconcile of a thousand nodes costs a few dozen round trips,
not a thousand.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import random
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionDropped,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.protocol.states import KeeperState, ZnodeStat
from kazoo.retry import KazooRetry
from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE, READ_ACL_UNSAFE, Permissions, make_acl

from . import session_file
from .config import ServiceSettings, TLSSettings, ZooKeeperSettings
from .logs import KAZOO_REPEATS
from .neighbours import announcing_alongside
from .payload import names_endpoint, same_registration
from .tls import client_context, refusal_reason

log = logging.getLogger(__name__)

# Pause before retrying nodes whose last attempt failed for a reason other
# than a lost connection (a reconnect wakes the worker by itself); it doubles
# with each failure in a row, up to MAX_RETRY_DELAY, so a permanent refusal
# (NoAuth) costs ZooKeeper one request per path every half minute.
RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 30.0
# After ZooKeeper refused our SASL credentials kazoo stops connecting; we open
# a new connection this long after the first refusal, doubling to
# MAX_RETRY_DELAY (one server of an ensemble may be the one that refuses).
REOPEN_DELAY = 2.0
# kazoo stops as well when the connection merely drops during the SASL login
# (a server restarting, a network blip); then we reconnect as kazoo itself
# would after a drop: at once, then a little slower, up to MAX_DROP_DELAY.
DROP_DELAY = 0.1
MAX_DROP_DELAY = 0.5
# Errors that mean "the connection, not this request": retry the whole pass
# once connected again.
CONNECTION_ERRORS = (ConnectionLoss, SessionExpiredError, KazooTimeoutError, AuthFailedError)
# A registration key whose last element is "<prefix>#<anything>" stands for one
# ephemeral *sequential* znode "<prefix><10-digit sequence>" (ServerSet
# members); the name ZooKeeper assigns is what we own, update and delete.
SEQUENCE_MARK = "#"


def sequence_prefix(key: str) -> str | None:
    """The znode prefix for a sequential registration key, or None for a fixed path."""
    parent, name = posixpath.split(key)
    if SEQUENCE_MARK not in name:
        return None
    return posixpath.join(parent, name.split(SEQUENCE_MARK, 1)[0])
# While ZooKeeper is out of reach, one line says so this often.
PROGRESS_INTERVAL = 60.0
# Upper bound on waiting for one pipelined batch of replies.
REPLY_TIMEOUT = 10.0
# Requests pipelined before waiting for their replies.  Every request in
# flight holds a kazoo AsyncResult (a Condition and its lock); sending a
# thousand at once makes a start-up peak the process keeps as heap for good.
# A round trip is about a millisecond here, so batches cost start-up little.
PIPELINE_DEPTH = 64


def batches(items: list, size: int = PIPELINE_DEPTH):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@dataclass(frozen=True)
class _Owned:
    data: bytes | None  # None: held by a session we reattached to; contents unknown
    version: int


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

    def start(self) -> None:
        self._cancel.clear()
        super().start()

    def stop(self) -> None:
        self._cancel.set()
        super().stop()


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


@contextmanager
def _reading_client(settings: ZooKeeperSettings, timeout: float) -> Iterator[KazooClient]:
    """A short-lived client for a command that reads; whatever keeps it from
    answering is a ConnectionError that says why."""
    client = make_client(settings)
    try:
        try:
            client.start(timeout=timeout)
        except KazooTimeoutError:
            raise ConnectionError(tls_refusals(client.handler)
                                  or f"no connection within {timeout:.2g}s") from None
        try:
            yield client
        except AuthFailedError:
            raise ConnectionError(refused_credentials(settings)) from None
        except (ConnectionLoss, SessionExpiredError, KazooTimeoutError) as exc:
            raise ConnectionError(f"connection lost ({type(exc).__name__})") from None
    finally:
        client.stop()
        client.close()


def node_stats(settings: ZooKeeperSettings, paths: list[str],
               timeout: float = 5.0) -> dict[str, ZnodeStat | None]:
    """Each of ``paths``' stat (None: no such node), read by a short-lived client."""
    with _reading_client(settings, timeout) as client:
        lookups = {path: client.exists_async(path) for path in paths}
        return {path: lookup.get(timeout=timeout) for path, lookup in lookups.items()}


def read_existing(settings: ZooKeeperSettings, paths: list[str],
                  timeout: float = 5.0) -> dict[str, bool]:
    """Which of ``paths`` exist (for ``status``)."""
    return {path: stat is not None
            for path, stat in node_stats(settings, paths, timeout).items()}


def advertising(settings: ZooKeeperSettings, services: list[ServiceSettings],
                timeout: float = 5.0) -> dict[str, list[str]]:
    """For each service, the znodes that advertise its endpoint now, whoever holds them:
    its node path, or for sequential members every child of the parent whose data
    names its host and port (for ``drain --stop``).  PermissionError for a
    member we may not read: whether it names the endpoint is unknown."""
    with _reading_client(settings, timeout) as client:
        found: dict[str, list[str]] = {}
        for service in services:
            if sequence_prefix(service.node_path) is None:
                exists = client.exists(service.node_path) is not None
                found[service.name] = [service.node_path] if exists else []
                continue
            parent = posixpath.dirname(service.node_path)
            try:
                children = client.get_children(parent)
            except NoNodeError:
                children = []
            reads = [(child, client.get_async(posixpath.join(parent, child)))
                     for child in children]
            nodes = []
            for child, read in reads:
                try:
                    data, _ = read.get(timeout=timeout)
                except NoNodeError:
                    continue
                except NoAuthError:
                    raise PermissionError(f"{posixpath.join(parent, child)}: NoAuth, its ACL "
                                          "does not let the world read it") from None
                if names_endpoint(data or b"", service.service_hostname, service.service_port):
                    nodes.append(posixpath.join(parent, child))
            found[service.name] = nodes
        return found


def owners(settings: ZooKeeperSettings, paths: list[str], timeout: float = 5.0) -> dict[str, int]:
    """The session that holds each of ``paths`` that exists (``handoff``'s proof)."""
    return {path: stat.ephemeralOwner
            for path, stat in node_stats(settings, paths, timeout).items() if stat is not None}


class Registry:
    """Registers ephemeral znodes; see the module docstring for the guarantees.

    :meth:`update` is called by one thread (the listener's event loop), so the
    wanted set changes in exactly the order the loop decided.  ``on_change``
    and ``on_fatal`` are called from the registry's own threads and must only
    hand the news on.
    """

    def __init__(self, settings: ZooKeeperSettings,
                 session: session_file.SessionStore | None = None) -> None:
        self.on_change: Callable[[], None] = lambda: None  # after ZooKeeper changed
        # An unexpected exception in the worker: the process must end.
        self.on_fatal: Callable[[BaseException], None] = lambda exc: None
        self._store = session
        self._saved = session.load() if session is not None else None
        client_id = None
        if self._saved is not None:
            client_id = (self._saved.session_id, self._saved.password)
            log.info("reattaching to ZooKeeper session 0x%x (%d node(s))",
                     self._saved.session_id, len(self._saved.nodes))
        self._client = make_client(settings, client_id)
        self._client.handler.on_refusal = self._on_refusal
        self._settings = settings
        self._acl = node_acl(settings)
        # SASL: kazoo reports CONNECTED before the server has checked our
        # credentials, so a new connection is confirmed by one read first.
        self._sasl = settings.auth is not None and settings.auth.sasl
        self._unconfirmed = False
        self._refusals = 0  # refused logins in a row
        self._drops = 0  # logins cut short in a row
        self._refused = False  # the last login was refused (for status)
        self._reopen_at: float | None = None  # when to connect again after AUTH_FAILED
        # The session of the last connection (kazoo only tells while connected),
        # and the one to resume after kazoo gave up and forgot it.
        self._last_client_id: tuple[int, bytes] | None = None
        self._resume: tuple[int, bytes] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        # Shared with the caller and kazoo's threads, under _lock.
        self._wanted: dict[str, bytes] = {}
        self._dirty: set[str] = set()  # wanted data changed; what we wrote says what to do
        self._suspect: set[str] = set()  # must be looked up: watches fired, retries
        self._examine_all = True
        # Backoff for paths whose last attempt failed: failures in a row, next try.
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        # Counters for status and metrics.
        self.registrations = 0
        self.deregistrations = 0
        self.connects = 0
        self._registered: frozenset[str] = frozenset()  # published copy of _owned's keys
        # Worker thread only.
        self._owned: dict[str, _Owned] = {}
        self._session_id: int | None = None
        self._saved_nodes: dict[str, str] | None = None  # as last written to the file
        # Sequential keys: the znode ZooKeeper named for each, and back.
        self._nodes: dict[str, str] = {}
        self._keys: dict[str, str] = {}
        # Sequential creates whose reply was lost: (parent cversion before, data).
        self._uncertain: dict[str, tuple[int | None, bytes]] = {}
        # After a reattach: parents whose members our old incarnation may have
        # created without saving their names (killed in between); swept once settled.
        self._reattached = False
        self._sweep: set[str] = set()
        # With [auth]: parents whose ACL is still to be looked at, once each.
        self._acl_checks: set[str] = set()
        self._acl_checked: set[str] = set()
        self._published_nodes: dict[str, str] = {}
        # Nodes of a reattached session that we do not want (yet): kept until
        # the listener has worked out its health after the restart.
        self._holding = True
        self._foreign: dict[str, int] = {}  # path -> holder we logged about (0: persistent)
        # Sequential keys looked at for other sessions announcing their endpoint
        # (once per key and process), and the nodes already logged.
        self._neighbours_checked: set[str] = set()
        self._neighbours_logged: set[str] = set()
        # The current stretch without a connection (set by kazoo's callbacks,
        # under _lock): since when, and whether the session expired meanwhile;
        # the worker logs its progress.  Until the first connect: since start.
        self._session_timeout = settings.session_timeout
        self._ever_connected = False
        self._away_since: float | None = time.monotonic()
        self._expired = False
        self._next_progress = self._away_since + PROGRESS_INTERVAL
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)

    # -- public API ---------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; returns at once."""
        self._client.add_listener(self._on_connection_state)
        self._client.start_async()
        self._thread.start()

    def update(self, changes: dict[str, bytes | None]) -> None:
        """Want each path with its data, or (data None) no longer want it. Never blocks."""
        with self._lock:
            for path, data in changes.items():
                if self._wanted.get(path) == data:
                    continue
                if data is None:
                    self._wanted.pop(path, None)
                else:
                    self._wanted[path] = data
                self._dirty.add(path)
                self._failures.pop(path, None)  # new wishes are tried at once
        self._wake.set()

    def settled(self, parents: Collection[str] = ()) -> None:
        """The wanted set is now complete: nodes of a reattached session that are
        not wanted may go.  Until then they are kept, so a restart does not flap
        a node whose section turns out healthy a moment later.  ``parents``: the
        znodes under which the config registers; after a reattach, any node of
        our session there that nothing wants is deleted (our previous
        incarnation may have created it and died before saving its name)."""
        with self._lock:
            self._holding = False
            self._examine_all = True
            self._sweep |= set(parents)
            if self._acl is not None:
                self._acl_checks |= set(parents)
        self._wake.set()

    @property
    def connected(self) -> bool:
        """Connected, and with SASL logged in (kazoo says connected before the login)."""
        return self._client.connected and not self._unconfirmed

    @property
    def problem(self) -> str | None:
        """Why we may not be connected, as far as we know: our login refused, or a
        server's certificate."""
        if self._refused:
            return refused_credentials(self._settings)
        return tls_refusals(self._client.handler)

    def registered(self) -> frozenset[str]:
        """Keys we hold in ZooKeeper, as the worker last confirmed them."""
        return self._registered

    def node_of(self, key: str) -> str | None:
        """The znode that holds ``key`` (a sequential member's assigned name)."""
        if sequence_prefix(key) is None:
            return key
        return self._published_nodes.get(key)

    @property
    def session_id(self) -> int | None:
        """The session we hold, as the worker last saw it."""
        return self._session_id

    def hand_over_problem(self) -> str | None:
        """Why a successor could not take over our session right now, or None."""
        if self._store is None:
            return "no session file"
        problem = self._store.hand_over_problem()
        if problem is not None:
            return problem
        if self._session_id is None or not self._client.connected:
            return "not connected to ZooKeeper: there is no session to hand over"
        return None

    def hand_over(self, timeout: float = 0.5) -> str | None:
        """Stop without closing the session: a successor reattaches to it (see
        :mod:`.session_file`) and every node stays.  Returns why it could not
        (the caller should :meth:`stop` instead), or None."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return f"the ZooKeeper worker did not stop within {timeout:g}s"
        if self._store is None:
            return "no session file"
        if self._session_id is None:
            return "no ZooKeeper session to hand over"
        self._saved_nodes = None  # written again even if unchanged: the file may be gone
        self._save_session()
        if not self._store.flush(timeout):
            return self._store.problem or "the session file was not written"
        log.info("handing over session 0x%x with %d node(s)", self._session_id,
                 len(self._owned))
        return None

    def stop(self, timeout: float = 0.8) -> None:
        """Close the session, which deletes every node we own; bounded by ``timeout``."""
        self._stopping = True
        self._wake.set()
        closer = threading.Thread(target=self._close, name="registry-close", daemon=True)
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            log.warning("ZooKeeper did not confirm the shutdown in %.1fs; exiting anyway "
                        "(our nodes go when the session times out)", timeout)

    # -- kazoo callbacks: never block here (kazoo issue 355) ------------------

    def _on_connection_state(self, state: str) -> None:
        self.on_change()
        if state == KazooState.CONNECTED:
            self.connects += 1
            with self._lock:
                self._last_client_id = self._client.client_id
                self._unconfirmed = self._sasl
                away_since, self._away_since = self._away_since, None
                expired, self._expired = self._expired, False
                first, self._ever_connected = not self._ever_connected, True
                self._examine_all = True
                self._failures.clear()  # a new connection: try everything at once
                self._retry_at.clear()
                wanted = len(self._wanted)
            self._wake.set()
            away = time.monotonic() - away_since if away_since is not None else 0.0
            repeats = KAZOO_REPEATS.take(forget=True)
            if self._sasl:
                return  # logged once the server has accepted the login
            if first:
                took = f" after {away:.0f} s" if away >= PROGRESS_INTERVAL else ""
                log.info("connected to ZooKeeper%s%s", took, f"; {repeats}" if repeats else "")
            else:
                kept = (f"a new session: registering {wanted} node(s)" if expired else
                        f"the session lived: {len(self._registered)} node(s) kept")
                log.info("reconnected to ZooKeeper after %.1f s away; %s%s", away, kept,
                         f"; {repeats}" if repeats else "")
        elif state == KazooState.SUSPENDED:
            with self._lock:
                if self._away_since is None:
                    self._away_since = time.monotonic()
                    self._next_progress = self._away_since + PROGRESS_INTERVAL
            self._wake.set()  # the worker logs the progress of the outage
            log.warning("ZooKeeper connection suspended; %d node(s) stay while the session "
                        "lives (session_timeout %g s)", len(self._registered),
                        self._session_timeout)
        elif (state == KazooState.LOST and not self._stopping
              and self._client.client_state == KeeperState.AUTH_FAILED):
            # kazoo has stopped connecting for good, and forgets its session
            # right after this call; the worker opens a new connection.  After
            # a drop it resumes the session: its nodes live on until it
            # expires, and a new session would leave them up even for a
            # section gone down meanwhile.  Not after a refusal: each refused
            # login would keep alive a session we cannot act in.
            logger = self._client.logger
            failure, logger.auth_failure = logger.auth_failure, None
            dropped = dropped_during_login(failure)
            with self._lock:
                self._resume = self._last_client_id if dropped else None
                if dropped:
                    self._drops += 1
                    delay = min(DROP_DELAY * 2 ** (self._drops - 1), MAX_DROP_DELAY)
                    first = self._drops == 1
                else:
                    self._refusals += 1
                    self._refused = True
                    delay = min(REOPEN_DELAY * 2 ** (self._refusals - 1), MAX_RETRY_DELAY)
                    first = self._refusals == 1
                self._reopen_at = time.monotonic() + delay
            if dropped and first:
                log.warning("ZooKeeper connection dropped during the SASL login; "
                            "reconnecting to the same session")
            elif first:
                log.error("%s: nothing can be registered until it accepts them; trying "
                          "again every %gs at most", refused_credentials(self._settings),
                          MAX_RETRY_DELAY)
            self._wake.set()
        elif state == KazooState.LOST and not self._stopping:
            with self._lock:
                if self._away_since is None:
                    self._away_since = time.monotonic()
                    self._next_progress = self._away_since + PROGRESS_INTERVAL
                self._expired = True
            self._wake.set()
            delay = self._client.handler.session_expired()
            log.warning("ZooKeeper session lost; will reconnect in %.2fs (reconnect_spread) "
                        "and re-register", delay)

    def _on_refusal(self) -> None:
        self.on_change()  # status shows why we are not connected

    def _on_watch(self, event) -> None:
        with self._lock:
            if event.path is None:  # a session event (kazoo fires these at expiry)
                self._examine_all = True
            else:
                self._suspect.add(event.path)  # a znode; the worker maps it to its key
        self._wake.set()

    # -- worker ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # crash-only: the listener exits and is restarted
            if not self._stopping:
                log.critical("ZooKeeper worker failed", exc_info=True)
                self.on_fatal(exc)

    def _next_wait(self) -> float | None:
        with self._lock:
            if self._reopen_at is not None:
                return max(0.0, self._reopen_at - time.monotonic())
            # Retries wait for their time only while connected; a reconnect
            # wakes us and clears them (waiting for a past retry would spin).
            if not self._retry_at or not self._client.connected:
                return None
            return max(0.0, min(self._retry_at.values()) - time.monotonic())

    def _progress_wait(self) -> float | None:
        """Seconds until the next line about an outage; None while connected."""
        with self._lock:
            if self._away_since is None:
                return None
            return max(0.0, self._next_progress - time.monotonic())

    def _log_progress(self) -> None:
        """While ZooKeeper is out of reach: one line every PROGRESS_INTERVAL."""
        now = time.monotonic()
        with self._lock:
            if self._away_since is None or now < self._next_progress:
                return
            while self._next_progress <= now:
                self._next_progress += PROGRESS_INTERVAL
            away, expired, wanted = now - self._away_since, self._expired, len(self._wanted)
            ever_connected = self._ever_connected
        repeats = KAZOO_REPEATS.take()
        if not ever_connected:
            state = f"no ZooKeeper session yet after {away:.0f} s; {wanted} node(s) to register"
        elif expired:
            state = (f"still disconnected from ZooKeeper after {away:.0f} s; the session "
                     f"expired: {wanted} node(s) to register once a server answers")
        elif away < self._session_timeout:
            state = (f"still disconnected from ZooKeeper after {away:.0f} s; "
                     f"{len(self._registered)} node(s) kept while the session lives "
                     f"(session_timeout {self._session_timeout:g} s)")
        else:
            # Only a server can tell: one that is up has expired the session,
            # a restarted ensemble gives it a fresh session_timeout.
            state = (f"still disconnected from ZooKeeper after {away:.0f} s; "
                     f"{len(self._registered)} node(s) kept if the session still lives "
                     f"(a server that is up expires it {self._session_timeout:g} s after "
                     f"it last heard from us)")
        log.warning("%s%s", state, f"; {repeats}" if repeats else "")

    def _work(self) -> None:
        while True:
            waits = [wait for wait in (self._next_wait(), None if self._client.connected
                                       else self._progress_wait()) if wait is not None]
            self._wake.wait(min(waits) if waits else None)
            self._wake.clear()
            if self._stopping:
                return
            self._log_progress()
            with self._lock:
                reopen = self._reopen_at is not None and self._reopen_at <= time.monotonic()
                if reopen:
                    self._reopen_at = None
            if reopen:
                self._reopen()
                continue
            # Read once: kazoo's thread may drop the connection at any moment.
            client_id = self._client.client_id if self._client.connected else None
            if not client_id:
                continue  # the CONNECTED callback wakes us again
            if self._unconfirmed and not self._confirm_credentials():
                continue
            self._refused = False
            session_id = client_id[0]
            now = time.monotonic()
            with self._lock:
                due = {path for path, when in self._retry_at.items() if when <= now}
                for path in due:
                    del self._retry_at[path]
                wanted = dict(self._wanted)
                examine_all, self._examine_all = self._examine_all, False
                changed, self._dirty = self._dirty, set()
                suspect, self._suspect = self._suspect | due, set()
            # Watches name the znode; a ServerSet member's key differs from it.
            suspect = {self._keys.get(path, path) for path in suspect}
            if session_id != self._session_id:
                self._new_session(session_id, client_id[1])
                examine_all = True
                self.on_change()  # the status file names the session
            if examine_all:
                suspect |= set(wanted) | set(self._owned)
            # Nodes of a reattached session: read what they hold before writing.
            suspect |= {path for path in changed
                        if (owned := self._owned.get(path)) is not None and owned.data is None}
            try:
                failed = self._reconcile(changed - suspect, suspect, wanted, session_id)
            except CONNECTION_ERRORS:
                # Everything again once connected; a reconnect wakes us.
                with self._lock:
                    self._suspect |= changed | suspect
                    self._examine_all = True
                if self._client.connected:
                    self._wake.set()
                failed = set()
            self._schedule_retries(failed, (changed | suspect) - failed)
            self._warn_open_parents()
            self._log_neighbours(session_id)
            if self._registered != self._owned.keys() or self._published_nodes != self._nodes:
                self._registered = frozenset(self._owned)
                self._published_nodes = dict(self._nodes)
                self._save_session()
                self.on_change()

    def _reopen(self) -> None:
        """Connect again after kazoo gave up with AUTH_FAILED, with a new client:
        on the session to resume, if any (kazoo's own client forgot it; if it
        expired meanwhile, ZooKeeper says so and the client opens a new one)."""
        with self._lock:
            client_id, self._resume = self._resume, None
        old = self._client
        old.remove_listener(self._on_connection_state)
        # Its connection thread has ended: this sends nothing, the session stays.
        old.stop()
        old.close()
        client = make_client(self._settings, client_id)
        client.handler.on_refusal = self._on_refusal
        client.add_listener(self._on_connection_state)
        with self._lock:  # stop() closes whichever client is ours once it took the lock
            if self._stopping:
                client.close()
                return
            self._client = client
            client.start_async()

    def _confirm_credentials(self) -> bool:
        """SASL: one read on a new connection tells whether the server accepted
        our login (a refusal is logged by the state listener)."""
        confirmation = self._client.exists_async("/")
        try:
            confirmation.get(timeout=REPLY_TIMEOUT)
        except KazooTimeoutError:
            # Slow, not refused (a refusal or a drop changes the state, which
            # wakes us): look again when the answer comes.
            confirmation.rawlink(lambda _: self._wake.set())
            return False
        except (KazooException, *CONNECTION_ERRORS):
            return False  # refused, or the connection went: a state change wakes us
        with self._lock:
            if not self._unconfirmed:
                return True
            self._unconfirmed = False
            self._refusals = 0
            self._drops = 0
        log.info("connected to ZooKeeper (SASL %s as %r)", self._settings.auth.mechanism,
                 self._settings.auth.user)
        self.on_change()
        return True

    def _new_session(self, session_id: int, password: bytes) -> None:
        saved = self._saved
        self._saved = None
        if saved is not None and saved.session_id == session_id:
            # The session of our previous incarnation is still alive: its nodes are ours.
            self._owned = {key: _Owned(None, -1) for key in saved.nodes}
            self._nodes = {key: node for key, node in saved.nodes.items()
                           if sequence_prefix(key) is not None}
            self._reattached = True
            log.info("reattached to session 0x%x; its %d node(s) stay", session_id,
                     len(saved.nodes))
        else:
            # A new session owns nothing yet; whatever the old one held is gone.
            if saved is not None:
                log.info("session 0x%x has expired; started 0x%x", saved.session_id,
                         session_id)
            self._owned.clear()
            self._nodes = {}
            self._reattached = False
        self._keys = {node: key for key, node in self._nodes.items()}
        self._uncertain.clear()  # a lost create of the old session died with it
        self._session_id = session_id
        self._password = password
        self._saved_nodes = None
        self._save_session()

    def _save_session(self) -> None:
        """Keep the session file in step with the nodes we hold (written off this thread)."""
        if self._store is None or self._session_id is None:
            return
        nodes = {key: self._nodes.get(key, key) for key in self._owned}
        if nodes == self._saved_nodes:
            return
        self._store.put(session_file.SavedSession(self._session_id, self._password, nodes))
        self._saved_nodes = nodes

    def _node(self, key: str) -> str | None:
        """The znode holding ``key``; None for a sequential member not created yet."""
        return self._nodes.get(key) if sequence_prefix(key) is not None else key

    def _forget_node(self, key: str) -> None:
        self._owned.pop(key, None)
        node = self._nodes.pop(key, None)
        if node is not None:
            self._keys.pop(node, None)

    def _schedule_retries(self, failed: set[str], succeeded: set[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for path in succeeded:
                self._failures.pop(path, None)
            for path in failed:
                count = self._failures.get(path, 0) + 1
                self._failures[path] = count
                delay = min(RETRY_DELAY * 2 ** (count - 1), MAX_RETRY_DELAY)
                self._retry_at[path] = min(self._retry_at.get(path, now + delay), now + delay)

    def _decide_from_memory(self, path: str, data: bytes | None) -> tuple | None:
        """What to do for a path whose wanted data changed, from what this session wrote."""
        owned = self._owned.get(path)
        if data is None:
            return ("delete", None, owned.version) if owned else None
        if owned is None:
            return ("create", data, 0)
        return ("set", data, owned.version) if owned.data != data else None

    def _decide_from_stat(self, path: str, data: bytes | None, stat, session_id,
                          current: bytes | None = None) -> tuple | None:
        """What to do for a path given what ZooKeeper says is there now
        (``current``: its data, read for nodes of a reattached session)."""
        if stat is None:
            self._forget_node(path)
            self._foreign.pop(path, None)  # whoever held it is gone
            return ("create", data, 0) if data is not None else None
        if stat.ephemeralOwner != session_id and sequence_prefix(path) is not None:
            # The member we knew is not ours (any more): register a new one.
            self._forget_node(path)
            return ("create", data, 0) if data is not None else None
        if stat.ephemeralOwner == session_id:
            owned = self._owned.get(path)
            if (data is not None and owned is not None and owned.data is None
                    and current is not None and same_registration(current, data)):
                # Our previous incarnation wrote the same thing but for its pid
                # and start time: leave it, so consumers see no change at all.
                self._owned[path] = _Owned(data, stat.version)
                return None
            if data is None:
                if self._holding and owned is not None and owned.data is None:
                    return None  # a reattached node: wait until we know our health
                return ("delete", None, stat.version)
            if owned is None or owned.data != data or owned.version != stat.version:
                return ("set", data, stat.version)
            return None
        self._owned.pop(path, None)
        if data is None:
            return None  # not ours and not wanted: not our business
        if self._foreign.get(path) != stat.ephemeralOwner:  # once per holder, not per look
            self._foreign[path] = stat.ephemeralOwner
            if stat.ephemeralOwner == 0:
                log.error("%s exists as a persistent node we did not create; leaving it",
                          path)
            else:
                log.warning("%s is held by another session (0x%x); leaving it alone and "
                            "registering when it goes", path, stat.ephemeralOwner)
        return None  # the exists watch set by the lookup tells us when it goes

    def _reconcile(self, changed: set[str], suspect: set[str], wanted: dict[str, bytes],
                   session_id) -> set[str]:
        """One pass; returns the paths to look at again.

        ``changed`` paths only had their wanted data change, so what this
        session wrote tells us what to do without a read.  ``suspect`` paths
        (reconnects, watches, retries) are looked up first.
        """
        if self._reattached:
            self._find_unsaved_members(wanted)
        if self._uncertain:
            self._resolve_uncertain(session_id)
        if self._reattached and not self._holding:
            self._sweep_unclaimed(session_id, wanted)
        # Changes known from memory (a dead program's deletion) go out first.
        actions = {path: self._decide_from_memory(path, wanted.get(path)) for path in changed}
        watched: set[str] = set()
        retry: set[str] = set()
        for batch in batches(sorted(suspect)):
            lookups = {}
            for path in batch:
                watch = self._on_watch if path in wanted else None
                owned = self._owned.get(path)
                node = self._node(path)
                if node is None:
                    # A member not created yet: nothing to look up.
                    actions[path] = self._decide_from_memory(path, wanted.get(path))
                elif owned is not None and owned.data is None:
                    # A node of the session we reattached to: what does it hold?
                    lookups[path] = (True, self._client.get_async(node, watch=watch))
                else:
                    lookups[path] = (False, self._client.exists_async(node, watch=watch))
            watched |= set(lookups)
            for path, (with_data, lookup) in lookups.items():
                current = None
                try:
                    if with_data:
                        current, stat = lookup.get(timeout=REPLY_TIMEOUT)
                    else:
                        stat = lookup.get(timeout=REPLY_TIMEOUT)
                except NoNodeError:
                    stat = None
                except CONNECTION_ERRORS:
                    raise
                except KazooException as exc:
                    log.error("%s: looking it up failed: %r", path, exc)
                    retry.add(path)
                    continue
                actions[path] = self._decide_from_stat(path, wanted.get(path), stat,
                                                       session_id, current)

        # Creates that wait on a parent we just made, or on a stale node we just
        # deleted, go out in a second round at once rather than after a pause.
        for _ in range(3):
            actions, failed = self._apply(actions, watched)
            retry |= failed
            if not actions:
                break
            for parent in sorted({posixpath.dirname(path) for path, action in actions.items()
                                  if action[0] == "create-parent"}):
                self._ensure_path(parent)
            actions = {path: ("create", data, 0) for path, (_, data, _) in actions.items()}
            watched |= set(actions)
        return retry | set(actions)

    def _apply(self, actions: dict[str, tuple | None], watched: set[str]):
        """Send the actions pipelined, PIPELINE_DEPTH at a time, collecting replies.

        Returns the creates to send again right away and the paths to retry later.
        """
        again: dict[str, tuple] = {}
        retry: set[str] = set()
        todo = [(path, action) for path, action in actions.items() if action is not None]
        for batch in batches(todo):
            batch_again, batch_retry = self._apply_batch(dict(batch), watched)
            again.update(batch_again)
            retry |= batch_retry
        return again, retry

    def _apply_batch(self, actions: dict[str, tuple], watched: set[str]):
        client = self._client
        pending = {}  # key -> (action, async result, data, parent stat before a member create)
        for path, (kind, data, version) in actions.items():
            prefix = sequence_prefix(path)
            parent_stat = None
            if kind == "create" and prefix is not None:
                # Sent first, answered first: the parent's cversion just before
                # our create, so a create whose reply is lost can be found again.
                parent_stat = client.exists_async(posixpath.dirname(path))
                self._uncertain[path] = (None, data)
                result = client.create_async(prefix, data, acl=self._acl, ephemeral=True,
                                             sequence=True)
            elif kind == "create":
                result = self._create_async(path, data)
                if path not in watched:
                    # Watch it from now on, so a deletion by hand brings it back.
                    client.exists_async(path, watch=self._on_watch)
            elif kind == "set":
                result = client.set_async(self._node(path), data, version)
            else:
                result = client.delete_async(self._node(path), version)
            pending[path] = (kind, result, data, parent_stat)

        again: dict[str, tuple] = {}
        retry: set[str] = set()
        for path, (action, result, data, parent_stat) in pending.items():
            if parent_stat is not None:
                try:
                    before = parent_stat.get(timeout=REPLY_TIMEOUT)
                except CONNECTION_ERRORS:
                    raise
                except KazooException:
                    before = None  # a lost create is then searched among all members
                self._uncertain[path] = (before.cversion if before else None, data)
            try:
                outcome = result.get(timeout=REPLY_TIMEOUT)
            except CONNECTION_ERRORS:
                raise
            except NoAuthError:
                log.error("%s: ZooKeeper refused %s (NoAuth); check [auth] and parent ACLs",
                          path, action)
                retry.add(path)
                continue
            except NoNodeError:
                if action == "create":
                    self._uncertain.pop(path, None)
                    again[path] = ("create-parent", data, 0)
                else:
                    self._forget_node(path)
                    retry.add(path)
                continue
            except (NodeExistsError, BadVersionError):
                retry.add(path)  # raced with someone; look again
                continue
            except KazooException as exc:
                self._uncertain.pop(path, None)  # refused: nothing was created
                log.error("%s: %s failed: %r", path, action, exc)
                retry.add(path)
                continue
            if action == "create":
                self._owned[path] = _Owned(data, 0)
                self.registrations += 1
                if sequence_prefix(path) is not None:
                    self._uncertain.pop(path, None)
                    self._nodes[path], self._keys[outcome] = outcome, path
                    client.exists_async(outcome, watch=self._on_watch)
                log.info("registered %s", self._node(path))
            elif action == "set":
                self._owned[path] = _Owned(data, outcome.version)
                log.info("updated %s", self._node(path))
            elif action == "delete":
                log.info("deregistered %s", self._node(path))
                self._forget_node(path)
                self.deregistrations += 1
        return again, retry

    def _warn_open_parents(self) -> None:
        """Warn once about each parent we register under whose ACL lets anyone
        delete (or create) its children: [auth] protects our nodes' data, but
        ZooKeeper allows deleting a node to whoever may delete in its parent."""
        with self._lock:
            parents = sorted(self._acl_checks - self._acl_checked)
            self._acl_checks.clear()
        lookups = [(parent, self._client.get_acls_async(parent)) for parent in parents]
        for parent, lookup in lookups:
            try:
                acls, _ = lookup.get(timeout=REPLY_TIMEOUT)
            except CONNECTION_ERRORS:
                with self._lock:  # looked at again on the next pass
                    self._acl_checks.add(parent)
                continue
            except NoNodeError:
                acls = []  # we create it, with our ACL
            except KazooException as exc:
                log.debug("%s: cannot read its ACL: %r", parent, exc)
                acls = []
            self._acl_checked.add(parent)
            granted = 0
            for acl in acls:
                if (acl.id.scheme, acl.id.id) == ("world", "anyone"):
                    granted |= acl.perms
            risks = [(name, risk) for name, bit, risk in (
                ("DELETE", Permissions.DELETE, "delete our nodes"),
                ("CREATE", Permissions.CREATE, "create a node at our path before we do"))
                if granted & bit]
            if risks:
                log.warning("%s grants %s to world:anyone: anyone can %s, [auth] "
                            "notwithstanding; give it an ACL like ours (creator all, "
                            "world read)", parent, " and ".join(name for name, _ in risks),
                            " or ".join(risk for _, risk in risks))

    def _log_neighbours(self, session_id: int) -> None:
        """Once per sequential registration: say so if another session's node
        under the same parent announces the same endpoint (both are listed)."""
        for key, node in sorted(self._nodes.items()):
            if key in self._neighbours_checked:
                continue
            try:
                others = announcing_alongside(self._client, key, node, session_id)
            except CONNECTION_ERRORS:
                return  # looked at on a later pass
            except KazooException as exc:  # e.g. a parent we may not list
                log.debug("%s: cannot look for other nodes announcing it: %r", key, exc)
                others = []
            self._neighbours_checked.add(key)
            for other in others:
                if other not in self._neighbours_logged:
                    self._neighbours_logged.add(other)
                    log.warning("%s, another session's node, announces the same endpoint as "
                                "our %s: readers that list %s see it twice until one goes",
                                other, node, posixpath.dirname(key))

    def _find_unsaved_members(self, wanted: dict[str, bytes]) -> None:
        """After a reattach, members the old incarnation created but never saved
        the name of (it died in between) are looked for like lost creates."""
        for key, data in wanted.items():
            if sequence_prefix(key) is not None and key not in self._nodes:
                self._uncertain.setdefault(key, (None, data))

    def _sweep_unclaimed(self, session_id: int, wanted: dict[str, bytes]) -> None:
        """Once settled after a reattach: delete the nodes of our session that no
        section wants, under every parent the config registers in.  Pipelined;
        repeated on the next pass if the connection drops half way."""
        with self._lock:
            parents = sorted(self._sweep)
        claimed = set(self._nodes.values()) | {key for key in wanted
                                              if sequence_prefix(key) is None}
        listings = [(parent, self._client.get_children_async(parent)) for parent in parents]
        candidates = []
        for parent, listing in listings:
            try:
                children = listing.get(timeout=REPLY_TIMEOUT)
            except NoNodeError:
                continue
            candidates += [posixpath.join(parent, child) for child in children
                           if posixpath.join(parent, child) not in claimed]
        lookups = [(node, self._client.exists_async(node)) for node in candidates]
        deletions = []
        for node, lookup in lookups:
            stat = lookup.get(timeout=REPLY_TIMEOUT)
            if stat is not None and stat.ephemeralOwner == session_id:
                log.info("deleting %s: a node of our session that no section wants", node)
                deletions.append((node, self._client.delete_async(node, stat.version)))
        self._await_deletions(deletions)
        for node, _ in deletions:
            key = self._keys.get(node, node)
            self._forget_node(key)
        with self._lock:
            self._sweep.difference_update(parents)
        self._reattached = False

    def _await_deletions(self, deletions: list) -> None:
        for node, deletion in deletions:
            try:
                deletion.get(timeout=REPLY_TIMEOUT)
            except (NoNodeError, BadVersionError):
                pass  # gone already, or changed: the next look decides
            except CONNECTION_ERRORS:
                raise
            except KazooException as exc:
                log.error("%s: delete failed: %r", node, exc)

    def _resolve_uncertain(self, session_id: int) -> None:
        """Find the members whose create reply a lost connection swallowed.

        Such a create may or may not have happened.  Only members numbered
        from the parent's cversion read just before the create can be one
        (not every member: at fleet scale that is every host), and only if our
        session holds them.  The one whose data matches is kept; any other of
        ours that no key claims is a duplicate and goes.
        """
        by_parent: dict[str, list[str]] = {}
        for key in self._uncertain:
            by_parent.setdefault(posixpath.dirname(key), []).append(key)
        for parent, keys in by_parent.items():
            floor = min((self._uncertain[key][0] or 0) for key in keys)
            prefixes = {posixpath.basename(sequence_prefix(key)) for key in keys}
            candidates = []
            try:
                children = self._client.get_children(parent)
            except NoNodeError:
                children = []  # no parent, so no member either
            for child in children:
                base = child.rstrip("0123456789")
                digits = child[len(base):]
                if base in prefixes and len(digits) == 10 and int(digits) >= floor:
                    node = posixpath.join(parent, child)
                    if node not in self._keys:
                        candidates.append(node)
            lookups = [(node, self._client.get_async(node)) for node in sorted(candidates)]
            ours = []
            for node, lookup in lookups:
                try:
                    data, stat = lookup.get(timeout=REPLY_TIMEOUT)
                except NoNodeError:
                    continue
                if stat.ephemeralOwner == session_id:
                    ours.append((node, data, stat))
            for key in keys:
                _, attempted = self._uncertain[key]
                match = next((entry for entry in ours
                              if same_registration(entry[1], attempted)), None)
                if match is not None:
                    ours.remove(match)
                    node, data, stat = match
                    self._owned[key] = _Owned(data, stat.version)
                    self._nodes[key], self._keys[node] = node, key
                    self._client.exists_async(node, watch=self._on_watch)
                    log.info("registered %s (its create's reply was lost)", node)
            if not self._reattached:  # else the sweep after settling deals with the rest
                deletions = []
                for node, _, stat in ours:
                    log.info("deleting %s: a duplicate member from a create whose reply "
                             "was lost", node)
                    deletions.append((node, self._client.delete_async(node, stat.version)))
                self._await_deletions(deletions)
            for key in keys:  # only now: a connection lost above means "look again"
                self._uncertain.pop(key, None)

    def _create_async(self, path: str, data: bytes):
        return self._client.create_async(path, data, acl=self._acl, ephemeral=True)

    def _ensure_path(self, path: str) -> None:
        # As nd_service_registry: the parent that holds our nodes gets our ACL
        # (deleting a node needs DELETE on its parent, so an open parent would
        # let anyone remove our registration); the ones above it that we have
        # to create stay open, so one team's first host does not lock
        # /services for every other team.  Existing nodes are left as they are.
        try:
            grandparent = posixpath.dirname(path)
            if grandparent != "/":
                self._client.ensure_path(grandparent, acl=OPEN_ACL_UNSAFE)
            self._client.ensure_path(path, acl=self._acl)
        except NoAuthError:
            log.error("cannot create %s: NoAuth on a parent node", path)
        except CONNECTION_ERRORS:
            raise
        except KazooException as exc:
            log.error("cannot create %s: %r", path, exc)  # retried with backoff

    def _close(self) -> None:
        self._thread.join(0.2)
        owned = len(self._owned)
        with self._lock:
            client = self._client
        was_connected = client.connected
        try:
            # Closing the session makes ZooKeeper delete all its ephemeral
            # nodes at once: one round trip, however many we hold.
            client.stop()
            client.close()
        except Exception as exc:
            log.warning("closing the ZooKeeper session failed: %r", exc)
            return
        if self._store is not None and was_connected:
            self._store.discard()  # closed: nothing to reattach to
        if owned:
            log.info("session closed: deregistered %d node(s)", owned)
