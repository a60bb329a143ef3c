"""Keep ZooKeeper's ephemeral znodes equal to the set we want registered.

The reconciler: the only code that writes to ZooKeeper, and its worker thread
the only thread that makes ZooKeeper calls for it.  Callers change the wanted
set with :meth:`Registry.update` — a dict update and a wake-up, never a
network call — and the worker makes ZooKeeper match it:

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
* another session's node announcing the endpoint of a sequential node of
  ours is logged once — looked for only when there is nothing else to do
  (see :mod:`.neighbours`);
* a lost connection is one line, its progress one line a minute, and the
  recovery one line (kazoo's own per-attempt warnings are counted into them).

What to do for each registration key is decided in
:mod:`.registry_decisions` (which also says what a key and a node are); the
client is made by :mod:`.zookeeper`.  Reads and writes are pipelined with
kazoo's async API, PIPELINE_DEPTH at a time, so a full reconcile of a
thousand nodes costs a few dozen round trips, not a thousand.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections.abc import Callable, Collection

from kazoo.client import KazooState
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    OperationTimeoutError,
    RequestTimeoutError,
    SessionExpiredError,
    SessionMovedError,
    ThrottledOpError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KeeperState
from kazoo.security import OPEN_ACL_UNSAFE

from . import session_file
from .backoff import Refusals
from .config import ZooKeeperSettings
from .logs import KAZOO_REPEATS
from .neighbours import NeighbourScans, Scan
from .outage import Outage, connected_line, progress_line
from .registry_decisions import (
    MAX_RETRY_DELAY,
    REPLY_TIMEOUT,
    RETRY_DELAY,
    Create,
    CreateParent,
    Delete,
    MemberNodes,
    Owned,
    RetrySchedule,
    SetData,
    batches,
    decide_from_memory,
    decide_from_stat,
    lost_create_candidates,
    match_lost_creates,
    open_parent_risks,
    pipelined,
    sequence_prefix,
)
from .zookeeper import (
    MAX_REOPEN_DELAY,
    LoginRetry,
    dropped_during_login,
    make_client,
    node_acl,
    refused_credentials,
    tls_refusals,
)

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from .registry_decisions import Action

log = logging.getLogger(__name__)

# Errors that mean "the connection, not this request": retry the whole pass
# once connected again.
CONNECTION_ERRORS = (ConnectionLoss, SessionExpiredError, KazooTimeoutError, AuthFailedError)
# ZooKeeper's refusals of the moment.  Reading a whole parent (where no single
# key can be retried), one is tried again with the backoff of a key's retries.
MOMENTARY_ERRORS = (ThrottledOpError, OperationTimeoutError, RequestTimeoutError,
                    SessionMovedError)
# While a low-priority read is outstanding, how often the worker looks
# whether real work has come up meanwhile.
YIELD_CHECK_INTERVAL = 0.01
# A new node's watch waits for a pass with no change waiting, at most this long.
WATCH_DELAY_MAX = 0.5


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
        # A listener of an earlier version of this config left its session to us.
        self.resumes_earlier_version = self._saved is not None and not self._saved.drain_sections
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
        self._login = LoginRetry()  # after AUTH_FAILED; under _lock
        # The session of the last connection (kazoo only tells while connected),
        # and the one to resume after kazoo gave up and forgot it.
        self._last_client_id: tuple[int, bytes] | None = None
        self._resume: tuple[int, bytes] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        # Shared with the caller and kazoo's threads, under _lock.
        self._wanted: dict[str, bytes] = {}  # registration key -> its node's data
        self._dirty: set[str] = set()  # keys whose wanted data changed; memory says what to do
        # Must be looked up: keys to retry, nodes whose watch fired (the worker
        # maps a member's node to its key).
        self._suspect: set[str] = set()
        self._examine_all = True
        self._retries = RetrySchedule()  # keys whose last attempt failed
        # Counters for status and metrics.
        self.registrations = 0
        self.deregistrations = 0
        self.connects = 0
        self._registered: frozenset[str] = frozenset()  # published copy of _owned's keys
        # Worker thread only.
        self._owned: dict[str, Owned] = {}  # key -> the node our session holds for it
        self._session_id: int | None = None
        self._saved_nodes: dict[str, str] | None = None  # as last written to the file
        self._members = MemberNodes()  # the node ZooKeeper named for each member's key
        # Members' keys whose create reply was lost: (parent cversion before, data).
        self._uncertain: dict[str, tuple[int | None, bytes]] = {}
        # Steps ZooKeeper refused for the moment wait out a backoff (the keys'
        # retry delays), even when other work brings a pass sooner.
        self._parent_reads = Refusals(RETRY_DELAY, MAX_RETRY_DELAY)
        self._login_reads = Refusals(RETRY_DELAY, MAX_RETRY_DELAY)
        self._pass_again_at: float | None = None
        # Nodes created whose watch is not set yet (key -> node), and since when.
        self._watch_later: dict[str, str] = {}
        self._watch_later_since = 0.0
        # After a reattach: parents whose members our old incarnation may have
        # created without saving their names (killed in between); swept once settled.
        self._reattached = False
        self._sweep: set[str] = set()
        self._sweep_again = False  # a sweep's delete was refused: swept once more
        # With [auth]: parents whose ACL is still to be looked at, once each.
        self._acl_checks: set[str] = set()
        self._acl_checked: set[str] = set()
        self._published_nodes: dict[str, str] = {}  # copy of _members for node_of()
        # Nodes of a reattached session that we do not want (yet): kept until
        # the listener has worked out its health after the restart.
        self._holding = True
        self._foreign: dict[str, int] = {}  # key -> holder we logged about (0: persistent)
        # The current stretch without a connection: begun and ended by
        # kazoo's callbacks, its progress logged by the worker; under _lock.
        self._outage = Outage(time.monotonic())
        # Other sessions announcing the endpoint of a sequential node of ours:
        # looked for once per key, when there is nothing else to do.
        self._neighbours = NeighbourScans()
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)

    # -- public API ---------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; returns at once."""
        self._client.add_listener(self._on_connection_state)
        self._client.start_async()
        self._thread.start()

    def update(self, changes: dict[str, bytes | None]) -> None:
        """Want each registration key's node with its data, or (data None) no
        longer want it. Never blocks."""
        with self._lock:
            for key, data in changes.items():
                if self._wanted.get(key) == data:
                    continue
                if data is None:
                    self._wanted.pop(key, None)
                else:
                    self._wanted[key] = data
                self._dirty.add(key)
                self._retries.reset(key)  # new wishes are tried at once
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
        if self._login.refused:
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

    def state_directory_problem(self) -> str | None:
        """Why a successor would not trust the session file's directory, or None;
        it stats the directory, so not on the loop."""
        return None if self._store is None else self._store.directory_problem()

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
        problem = self._store.flush(timeout)
        if problem is not None:
            return problem
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
        # kazoo logs an exception from a listener and carries on: ours must end us.
        try:
            self._connection_state_changed(state)
        except BaseException as exc:
            log.critical("ZooKeeper connection listener failed", exc_info=True)
            self.on_fatal(exc)

    def _connection_state_changed(self, state: str) -> None:
        self.on_change()
        if state == KazooState.CONNECTED:
            self._on_connected()
        elif state == KazooState.SUSPENDED:
            with self._lock:
                self._outage.begin(time.monotonic())
            self._wake.set()  # the worker logs the progress of the outage
            log.warning("ZooKeeper connection suspended; %d node(s) stay while the session "
                        "lives (session_timeout %g s)", len(self._registered),
                        self._settings.session_timeout)
        elif (state == KazooState.LOST and not self._stopping
              and self._client.client_state == KeeperState.AUTH_FAILED):
            self._on_login_failed()
        elif state == KazooState.LOST and not self._stopping:
            with self._lock:
                self._outage.begin(time.monotonic(), expired=True)
            self._wake.set()
            delay = self._client.handler.session_expired()
            log.warning("ZooKeeper session lost; will reconnect in %.2fs (reconnect_spread) "
                        "and re-register", delay)

    def _on_connected(self) -> None:
        self.connects += 1
        with self._lock:
            self._last_client_id = self._client.client_id
            self._unconfirmed = self._sasl
            ended = self._outage.end(time.monotonic())
            self._examine_all = True
            self._retries.clear()  # a new connection: try everything at once
            wanted = len(self._wanted)
        self._wake.set()
        repeats = KAZOO_REPEATS.take(forget=True)
        if self._sasl:
            return  # logged once the server has accepted the login
        log.info("%s%s", connected_line(ended, wanted, len(self._registered)),
                 f"; {repeats}" if repeats else "")

    def _on_login_failed(self) -> None:
        """kazoo has stopped connecting for good (AUTH_FAILED), and forgets its
        session right after this call; the worker opens a new connection.

        After a drop it resumes the session: its nodes live on until it
        expires, and a new session would leave them up even for a section gone
        down meanwhile.  Not after a refusal: each refused login would keep
        alive a session we cannot act in.
        """
        logger = self._client.logger
        failure, logger.auth_failure = logger.auth_failure, None
        dropped = dropped_during_login(failure)
        with self._lock:
            self._resume = self._last_client_id if dropped else None
            first = self._login.failed(dropped, time.monotonic())
        if dropped and first:
            log.warning("ZooKeeper connection dropped during the SASL login; "
                        "reconnecting to the same session")
        elif first:
            log.error("%s: nothing can be registered until it accepts them; trying "
                      "again every %gs at most", refused_credentials(self._settings),
                      MAX_REOPEN_DELAY)
        self._wake.set()

    def _on_refusal(self) -> None:
        self.on_change()  # status shows why we are not connected

    def _on_watch(self, event) -> None:
        try:
            with self._lock:
                if event.path is None:  # a session event (kazoo fires these at expiry)
                    self._examine_all = True
                else:
                    self._suspect.add(event.path)  # a znode; the worker maps it to its key
            self._wake.set()
        except BaseException as exc:  # as above: kazoo would log it and carry on
            log.critical("ZooKeeper watch callback failed", exc_info=True)
            self.on_fatal(exc)

    # -- worker ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # crash-only: the listener exits and is restarted
            if self._stopping and isinstance(exc, (KazooException, *CONNECTION_ERRORS)):
                # The client closed under the pass in flight: what stopping does.
                log.debug("ZooKeeper worker's last pass cut short by the stop: %r", exc)
                return
            log.critical("ZooKeeper worker failed", exc_info=True)
            self.on_fatal(exc)

    def _next_wait(self) -> float | None:
        with self._lock:
            reopen = self._login.wait(time.monotonic())
            if reopen is not None:
                return reopen
            # Retries wait for their time only while connected; a reconnect
            # wakes us and clears them (waiting for a past retry would spin).
            # No pass runs before the login is confirmed: a retry due meanwhile
            # is no reason to wake (it would spin); the confirmation's own is.
            retry_at = None if self._unconfirmed else self._retries.next_at()
            again, self._pass_again_at = self._pass_again_at, None
            if not self._client.connected:
                return None
            due = [when for when in (retry_at, again) if when is not None]
            return max(0.0, min(due) - time.monotonic()) if due else None

    def _progress_wait(self) -> float | None:
        """Seconds until the next line about an outage; None while connected."""
        with self._lock:
            return self._outage.wait(time.monotonic())

    def _log_progress(self) -> None:
        """While ZooKeeper is out of reach: one line every PROGRESS_INTERVAL."""
        with self._lock:
            stretch = self._outage.due(time.monotonic())
            wanted = len(self._wanted)
        if stretch is None:
            return
        repeats = KAZOO_REPEATS.take()
        log.warning("%s%s", progress_line(stretch, wanted, len(self._registered),
                                          self._settings.session_timeout),
                    f"; {repeats}" if repeats else "")

    def _work(self) -> None:
        while True:
            connected = self._client.connected
            waits = [wait for wait in (self._next_wait(),
                                       self._neighbours_wait() if connected else None,
                                       None if connected else self._progress_wait())
                     if wait is not None]
            self._wake.wait(min(waits) if waits else None)
            self._wake.clear()
            if self._stopping:
                return
            self._log_progress()
            with self._lock:
                reopen = self._login.due(time.monotonic())
            if reopen:
                self._reopen()
                continue
            # Read once: kazoo's thread may drop the connection at any moment.
            client_id = self._client.client_id if self._client.connected else None
            if not client_id:
                continue  # the CONNECTED callback wakes us again
            if self._unconfirmed and not self._confirm_credentials():
                continue
            with self._lock:
                self._login.refused = False
            session_id = client_id[0]
            now = time.monotonic()
            with self._lock:
                due = self._retries.take_due(now)
                wanted = dict(self._wanted)
                examine_all, self._examine_all = self._examine_all, False
                changed, self._dirty = self._dirty, set()
                suspect, self._suspect = self._suspect | due, set()
            # Watches name the node; a sequential node's key differs from it.
            suspect = {self._members.key(name) for name in suspect}
            if session_id != self._session_id:
                self._new_session(session_id, client_id[1])
                examine_all = True
                self.on_change()  # the status file names the session
            if examine_all:
                suspect |= set(wanted) | set(self._owned)
            # Nodes of a reattached session: read what they hold before writing.
            suspect |= {key for key in changed
                        if (owned := self._owned.get(key)) is not None and owned.data is None}
            try:
                failed = self._reconcile(changed - suspect, suspect, wanted, session_id)
                failed |= self._watch_new_nodes()
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
            members = self._members.as_dict()
            if self._registered != self._owned.keys() or self._published_nodes != members:
                self._registered = frozenset(self._owned)
                self._published_nodes = members
                self._save_session()
                self.on_change()
            self._look_for_neighbours(session_id)

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
        if self._waiting_out(self._login_reads):
            return False
        confirmation = self._client.exists_async("/")
        try:
            confirmation.get(timeout=REPLY_TIMEOUT)
        except KazooTimeoutError:
            # Slow, not refused (a refusal or a drop changes the state, which
            # wakes us): look again when the answer comes.
            confirmation.rawlink(lambda _: self._wake.set())
            return False
        except MOMENTARY_ERRORS as exc:  # no state change comes to wake us
            self._momentary_refusal(self._login_reads, exc, "confirming the login")
            return False
        except (KazooException, *CONNECTION_ERRORS):
            return False  # refused, or the connection went: a state change wakes us
        self._login_reads.succeeded()
        with self._lock:
            if not self._unconfirmed:
                return True
            self._unconfirmed = False
            self._login.accepted()
        log.info("connected to ZooKeeper (SASL %s as %r)", self._settings.auth.mechanism,
                 self._settings.auth.user)
        self.on_change()
        return True

    def _new_session(self, session_id: int, password: bytes) -> None:
        saved = self._saved
        self._saved = None
        if saved is not None and saved.session_id == session_id:
            # The session of our previous incarnation is still alive: its nodes are ours.
            self._owned = {key: Owned(None, -1) for key in saved.nodes}
            self._members = MemberNodes(saved.nodes)
            self._reattached = True
            log.info("reattached to session 0x%x; its %d node(s) stay", session_id,
                     len(saved.nodes))
        else:
            # A new session owns nothing yet; whatever the old one held is gone.
            if saved is not None:
                log.info("session 0x%x has expired; started 0x%x", saved.session_id,
                         session_id)
            self._owned.clear()
            self._members = MemberNodes()
            self._reattached = False
        self._uncertain.clear()  # a lost create of the old session died with it
        self._watch_later.clear()  # its nodes died with it
        self._sweep_again = False  # a new session has nothing to sweep
        self._neighbours.abandon()
        self._session_id = session_id
        self._password = password
        self._saved_nodes = None
        self._save_session()

    def _save_session(self) -> None:
        """Keep the session file in step with the nodes we hold (written off this thread)."""
        if self._store is None or self._session_id is None:
            return
        nodes = {key: self._members.node(key) or key for key in self._owned}
        if nodes == self._saved_nodes:
            return
        self._store.put(session_file.SavedSession(self._session_id, self._password, nodes))
        self._saved_nodes = nodes

    def _forget_node(self, key: str) -> None:
        self._owned.pop(key, None)
        self._members.forget(key)

    def _schedule_retries(self, failed: set[str], succeeded: set[str]) -> None:
        now = time.monotonic()
        with self._lock:
            self._retries.record(failed, succeeded, now)

    def _decide_from_stat(self, key: str, data: bytes | None, stat, session_id: int,
                          current: bytes | None = None) -> Action | None:
        """What to do for a key given what ZooKeeper says is there now
        (``current``: its data, read for nodes of a reattached session)."""
        decision = decide_from_stat(key, data, stat, session_id, self._owned.get(key),
                                    current, self._holding)
        if decision.forget:
            self._forget_node(key)
        if stat is None:
            self._foreign.pop(key, None)  # whoever held it is gone
        if decision.adopt is not None:
            self._owned[key] = decision.adopt
        holder = decision.held_by
        if holder is not None and self._foreign.get(key) != holder:  # once per holder
            self._foreign[key] = holder
            if holder == 0:
                log.error("%s exists as a persistent node we did not create; leaving it", key)
            else:
                log.warning("%s is held by another session (0x%x); leaving it alone and "
                            "registering when it goes", key, holder)
        return decision.action

    def _waiting_out(self, step: Refusals) -> bool:
        """Whether ``step`` still waits out a refusal's backoff; if so, a pass
        comes at its end (this one, brought by other work, leaves it alone)."""
        if not step.waiting(time.monotonic()):
            return False
        self._pass_again_at = step.until
        return True

    def _momentary_refusal(self, step: Refusals, exc: BaseException, what: str) -> None:
        """ZooKeeper refused ``what`` for the moment: that step again after its backoff."""
        delay = step.refused(time.monotonic())
        log.warning("ZooKeeper refused %s (%r); trying again in %.1f s", what, exc, delay)
        self._pass_again_at = step.until

    def _reconcile(self, changed: set[str], suspect: set[str], wanted: dict[str, bytes],
                   session_id: int) -> set[str]:
        """One pass; returns the keys to look at again.

        ``changed`` keys only had their wanted data change, so what this
        session wrote tells us what to do without a read.  ``suspect`` keys
        (reconnects, watches, retries) are looked up first.
        """
        if self._reattached:
            self._find_unsaved_members(wanted)
        # Reading whole parents: refused for the moment, they are tried again
        # later while the rest of the pass goes on (a dead program's deletion
        # must not wait for them).
        held: set[str] = set()
        refusal: BaseException | None = None
        backing_off = self._waiting_out(self._parent_reads)
        if self._uncertain:
            resolving = set(self._uncertain)
            unresolved = backing_off
            if not backing_off:
                try:
                    self._resolve_uncertain(session_id)
                except MOMENTARY_ERRORS as exc:
                    refusal = exc
                    unresolved = True
            if unresolved:
                # Not created again before we know whether their create happened:
                # looked at in the pass that finds out (kept across reconnects).
                held = set(self._uncertain)
                changed, suspect = changed - held, suspect - held
                with self._lock:
                    self._suspect |= held
            # Resolved: found (kept, or deleted if no longer wanted) or not (created
            # if still wanted) -- decided below like any other key.
            suspect |= (resolving - set(self._uncertain)) - changed
        # A node of a held key's lost create is ours and unclaimed: no sweep until
        # we know which it is.
        if ((self._reattached or self._sweep_again) and not self._holding and not held
                and not backing_off):
            try:
                self._sweep_unclaimed(session_id, wanted)
            except MOMENTARY_ERRORS as exc:
                refusal = exc
        if refusal is not None:
            self._momentary_refusal(self._parent_reads, refusal, "reading or sweeping a parent")
        elif not backing_off:
            self._parent_reads.succeeded()
        # Changes known from memory (a dead program's deletion) go out first.
        actions = {key: decide_from_memory(self._owned.get(key), wanted.get(key))
                   for key in changed}
        watched: set[str] = set()
        retry: set[str] = set()
        for batch in batches(sorted(suspect)):
            lookups = {}
            for key in batch:
                watch = self._on_watch if key in wanted else None
                owned = self._owned.get(key)
                node = self._members.node(key)
                if node is None:
                    # A member not created yet: nothing to look up.
                    actions[key] = decide_from_memory(owned, wanted.get(key))
                elif owned is not None and owned.data is None:
                    # A node of the session we reattached to: what does it hold?
                    lookups[key] = (True, self._client.get_async(node, watch=watch))
                else:
                    lookups[key] = (False, self._client.exists_async(node, watch=watch))
            watched |= {key for key in lookups if key in wanted}
            for key, (with_data, lookup) in lookups.items():
                current = None
                try:
                    if with_data:
                        current, stat = lookup.get(timeout=REPLY_TIMEOUT)
                    else:
                        stat = lookup.get(timeout=REPLY_TIMEOUT)
                except NoNodeError:
                    # A get that finds no node leaves no watch (an exists does):
                    # the node made for it is watched like any new one.
                    watched.discard(key)
                    stat = None
                except CONNECTION_ERRORS:
                    raise
                except KazooException as exc:
                    log.error("%s: looking it up failed: %r", key, exc)
                    retry.add(key)
                    continue
                actions[key] = self._decide_from_stat(key, wanted.get(key), stat,
                                                      session_id, current)

        # Creates that wait on a parent we just made go out in a second round
        # at once rather than after a pause.
        again: dict[str, CreateParent] = {}
        for _ in range(3):
            again, failed = self._apply(actions, watched)
            retry |= failed
            if not again:
                break
            for parent in sorted({posixpath.dirname(key) for key in again}):
                self._ensure_path(parent)
            actions = {key: Create(action.data) for key, action in again.items()}
        return retry | set(again)

    def _apply(self, actions: dict[str, Action | None], watched: set[str]
               ) -> tuple[dict[str, CreateParent], set[str]]:
        """Send the actions pipelined, PIPELINE_DEPTH to a batch, collecting replies.

        Returns the creates to send again right away, once their parent is
        made, and the keys to retry later.
        """
        again: dict[str, CreateParent] = {}
        retry: set[str] = set()
        todo = [(key, action) for key, action in actions.items() if action is not None]
        for batch_again, batch_retry in pipelined(
                todo, lambda batch: self._send(dict(batch)),
                lambda pending: self._collect(pending, watched)):
            again.update(batch_again)
            retry |= batch_retry
        return again, retry

    def _watch_new_nodes(self) -> set[str]:
        """Set the watch on each node created since (so that a deletion by hand
        brings it back), once no change waits for a pass, or WATCH_DELAY_MAX
        after the first: a start-up's creates go out first, not interleaved
        with as many watches (1,000 ``tcp://`` sections: connected to last
        node 0.59 s -> 0.36 s).  A node deleted before its watch is found
        gone by the same lookup.

        Returns the keys to retry after the backoff: ZooKeeper refused the
        watch.  A node we own that is gone already is looked up in the next pass.
        """
        if not self._watch_later:
            return set()
        with self._lock:
            waiting = bool(self._dirty)
        if waiting and time.monotonic() - self._watch_later_since < WATCH_DELAY_MAX:
            return set()  # the pass that change brings comes back here
        later, self._watch_later = self._watch_later, {}
        # Only nodes still ours as created (not deleted or replaced since).
        todo = [(key, node) for key, node in later.items()
                if key in self._owned and (self._members.node(key) or key) == node]
        unwatched: set[str] = set()
        for refused in pipelined(
                todo, lambda chunk: [(key, node, self._client.exists_async(
                    node, watch=self._on_watch)) for key, node in chunk],
                self._collect_watches):
            unwatched |= refused
        return unwatched

    def _collect_watches(self, sent: list[tuple[str, str, object]]) -> set[str]:
        unwatched = set()
        for key, node, result in sent:
            try:
                stat = result.get(timeout=REPLY_TIMEOUT)
            except CONNECTION_ERRORS:
                raise  # every node is looked up, with its watch, once connected again
            except KazooException as exc:
                log.warning("%s: ZooKeeper refused watching it (%r); looking again", node, exc)
                unwatched.add(key)
                continue
            if stat is None and key in self._owned:
                # Gone already (deleted by hand): looked up in the next pass,
                # which the wake brings at once, not after a retry's backoff.
                log.info("%s: deleted as soon as it was created; looking again", node)
                with self._lock:
                    self._suspect.add(node)
                self._wake.set()
        return unwatched

    def _watch_soon(self, key: str, node: str) -> None:
        if not self._watch_later:
            self._watch_later_since = time.monotonic()
        self._watch_later[key] = node

    def _send(self, actions: dict[str, Action]) -> dict[str, tuple]:
        """Send each action; returns key -> (action, its async result, the
        parent's stat read just before a member's create)."""
        client = self._client
        pending = {}
        for key, action in actions.items():
            prefix = sequence_prefix(key)
            parent_stat = None
            if isinstance(action, Create) and prefix is not None:
                # Sent first, answered first: the parent's cversion just before
                # our create, so a create whose reply is lost can be found again.
                parent_stat = client.exists_async(posixpath.dirname(key))
                self._uncertain[key] = (None, action.data)
                result = client.create_async(prefix, action.data, acl=self._acl,
                                             ephemeral=True, sequence=True)
            elif isinstance(action, Create):
                result = client.create_async(key, action.data, acl=self._acl, ephemeral=True)
            elif isinstance(action, SetData):
                result = client.set_async(self._members.node(key), action.data, action.version)
            else:
                result = client.delete_async(self._members.node(key), action.version)
            pending[key] = (action, result, parent_stat)
        return pending

    def _collect(self, pending: dict[str, tuple], watched: set[str]
                 ) -> tuple[dict[str, CreateParent], set[str]]:
        """Wait for each reply and note what it did; returns the creates that
        need their parent made and the keys to retry later.  A new node is
        watched soon (:meth:`_watch_new_nodes`) unless a lookup of this pass
        watches it already."""
        again: dict[str, CreateParent] = {}
        retry: set[str] = set()
        for key, (action, result, parent_stat) in pending.items():
            if parent_stat is not None:
                try:
                    before = parent_stat.get(timeout=REPLY_TIMEOUT)
                except CONNECTION_ERRORS:
                    raise
                except KazooException:
                    before = None  # a lost create is then searched among all members
                self._uncertain[key] = (before.cversion if before else None, action.data)
            try:
                outcome = result.get(timeout=REPLY_TIMEOUT)
            except CONNECTION_ERRORS:
                raise
            except NoAuthError:
                log.error("%s: ZooKeeper refused %s (NoAuth); check [auth] and parent ACLs",
                          key, action.verb)
                retry.add(key)
                continue
            except NoNodeError:
                if isinstance(action, Create):
                    self._uncertain.pop(key, None)
                    again[key] = CreateParent(action.data)
                else:
                    self._forget_node(key)
                    retry.add(key)
                continue
            except (NodeExistsError, BadVersionError):
                retry.add(key)  # raced with someone; look again
                continue
            except KazooException as exc:
                self._uncertain.pop(key, None)  # refused: nothing was created
                log.error("%s: %s failed: %r", key, action.verb, exc)
                retry.add(key)
                continue
            if isinstance(action, Create):
                self._owned[key] = Owned(action.data, 0)
                self.registrations += 1
                if sequence_prefix(key) is not None:
                    self._uncertain.pop(key, None)
                    self._members.add(key, outcome)
                    self._watch_soon(key, outcome)  # a new name: no watch on it yet
                elif key not in watched:
                    self._watch_soon(key, key)
                log.info("registered %s", self._members.node(key))
            elif isinstance(action, SetData):
                self._owned[key] = Owned(action.data, outcome.version)
                log.info("updated %s", self._members.node(key))
            elif isinstance(action, Delete):
                log.info("deregistered %s", self._members.node(key))
                self._forget_node(key)
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
            except (*CONNECTION_ERRORS, *MOMENTARY_ERRORS):
                with self._lock:  # looked at again on the next pass
                    self._acl_checks.add(parent)
                continue
            except NoNodeError:
                acls = []  # we create it, with our ACL
            except KazooException as exc:
                log.debug("%s: cannot read its ACL: %r", parent, exc)
                acls = []
            self._acl_checked.add(parent)
            risks = open_parent_risks(acls)
            if risks:
                log.warning("%s grants %s to world:anyone: anyone can %s, [auth] "
                            "notwithstanding; give it an ACL like ours (creator all, "
                            "world read)", parent, " and ".join(name for name, _ in risks),
                            " or ".join(risk for _, risk in risks))

    def _work_waiting(self) -> bool:
        """Whether low-priority work should make way: the worker has been woken
        (a wish, a watch, a connection change, a stop) or a retry is due."""
        if self._wake.is_set() or self._stopping or not self._client.connected:
            return True
        with self._lock:
            due = [when for when in (self._retries.next_at(), self._pass_again_at)
                   if when is not None]
        return bool(due) and min(due) <= time.monotonic()

    def _low_priority_reply(self, result):
        """The reply to a low-priority request, or None when real work came up
        first (the reply is dropped, the request sent again later).  Errors
        are raised; no reply within REPLY_TIMEOUT is KazooTimeoutError."""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while not result.wait(YIELD_CHECK_INTERVAL):
            if self._work_waiting():
                return None
            if time.monotonic() >= deadline:
                raise KazooTimeoutError(f"no reply within {REPLY_TIMEOUT:g}s")
        return result

    def _neighbours_wait(self) -> float | None:
        if self._unconfirmed:
            return None  # no pass runs until the login is confirmed: nothing to wait for
        now = time.monotonic()
        wait = self._neighbours.wait(self._members.as_dict(), now)
        if wait is not None and self._parent_reads.waiting(now):
            # Parents are not listed while a refusal's backoff lasts.
            wait = max(wait, self._parent_reads.until - now)
        return wait

    def _look_for_neighbours(self, session_id: int) -> None:
        """Once per sequential registration, when nothing else is to be done: say
        so if another session's node under the same parent announces the same
        endpoint (readers list both).  Each parent is listed once for all our
        keys under it and its other children read PIPELINE_DEPTH at a time;
        put aside as soon as real work is waiting, carried on with later (and
        while reading parents waits out a refusal's backoff)."""
        while not self._work_waiting() and not self._parent_reads.waiting(time.monotonic()):
            scan = self._neighbours.next_scan(self._members.as_dict(), time.monotonic())
            if scan is None:
                return
            try:
                if not self._scan_step(scan, session_id):
                    return
            except (*CONNECTION_ERRORS, *MOMENTARY_ERRORS) as exc:
                log.debug("%s: looking for other nodes announcing our endpoints was cut "
                          "short: %r", scan.parent, exc)
                self._neighbours.failed(scan, time.monotonic())
            except KazooException as exc:  # e.g. a parent we may not list
                log.debug("%s: cannot look for other nodes announcing our endpoints: %r",
                          scan.parent, exc)
                self._neighbours.finished(scan)

    def _scan_step(self, scan: Scan, session_id: int) -> bool:
        """List the scan's parent or read its next batch; False if real work came first."""
        if scan.siblings is None:
            try:
                listing = self._low_priority_reply(self._client.get_children_async(scan.parent))
                if listing is None:
                    return False
                scan.listed(listing.get())
            except NoNodeError:
                scan.listed([])
            if scan.capped:
                log.info("%s has %d other children: only the first %d are looked at for "
                         "nodes announcing our endpoints", scan.parent, scan.total,
                         len(scan.siblings))
        batch = scan.next_batch()
        reads = [(node, self._client.get_async(node)) for node in batch]
        # Replies come in the order sent: the last one answered means all were.
        if reads and self._low_priority_reply(reads[-1][1]) is None:
            return False
        for node, read in reads:
            try:
                data, stat = read.get(timeout=REPLY_TIMEOUT)
            except (NoNodeError, NoAuthError):
                continue  # gone, or not readable: nothing a reader could see either
            for ours in scan.announced_by(data or b"", stat.ephemeralOwner, session_id):
                if self._neighbours.first_sighting(node):
                    log.warning("%s, another session's node, announces the same endpoint "
                                "as our %s: readers that list %s see it twice until one "
                                "goes", node, ours, scan.parent)
        scan.advance(len(batch))
        if scan.done:
            self._neighbours.finished(scan)
        return True

    def _find_unsaved_members(self, wanted: dict[str, bytes]) -> None:
        """After a reattach, members the old incarnation created but never saved
        the name of (it died in between) are looked for like lost creates."""
        for key, data in wanted.items():
            if sequence_prefix(key) is not None and not self._members.has_node(key):
                self._uncertain.setdefault(key, (None, data))

    def _sweep_unclaimed(self, session_id: int, wanted: dict[str, bytes]) -> None:
        """Once settled after a reattach: delete the nodes of our session that no
        section wants, under every parent the config registers in.  Pipelined;
        repeated on the next pass if the connection drops half way."""
        with self._lock:
            parents = sorted(self._sweep)
        claimed = set(self._members.as_dict().values()) | {
            key for key in wanted if sequence_prefix(key) is None}
        listings = [(parent, self._client.get_children_async(parent)) for parent in parents]
        candidates = []
        for parent, listing in listings:
            try:
                children = listing.get(timeout=REPLY_TIMEOUT)
            except NoNodeError:
                continue
            except NoAuthError:  # a parent we may not list: not ours to fix
                log.error("%s: not allowed to list it, so nodes of our session that no "
                          "section wants there stay until the session ends", parent)
                continue
            candidates += [posixpath.join(parent, child) for child in children
                           if posixpath.join(parent, child) not in claimed]
        lookups = [(node, self._client.exists_async(node)) for node in candidates]
        deletions = []
        refusal = None
        for node, lookup in lookups:
            try:
                stat = lookup.get(timeout=REPLY_TIMEOUT)
            except NoAuthError:
                continue  # not a node we could have created
            except MOMENTARY_ERRORS as exc:  # looked at in the sweep after the backoff
                refusal = refusal or exc
                continue
            if stat is not None and stat.ephemeralOwner == session_id:
                log.info("deleting %s: a node of our session that no section wants", node)
                deletions.append((node, self._client.delete_async(node, stat.version)))
        delete_refusal, refused = self._await_deletions(deletions)
        for node, _ in deletions:
            if node not in refused:
                self._forget_node(self._members.key(node))
        # Unsaved members are looked for once, now the listing is done: one
        # wanted from now on is new, not one to find.
        self._reattached = False
        refusal = refusal or delete_refusal
        if refusal is not None:
            # The parents stay to sweep: a node whose delete was refused is listed
            # again, still unclaimed, once the backoff is over.
            self._sweep_again = True
            raise refusal
        with self._lock:
            self._sweep.difference_update(parents)
        self._sweep_again = False

    def _await_deletions(self, deletions: list) -> tuple[BaseException | None, set[str]]:
        """Wait for each delete; returns the first refusal of the moment (for the
        caller to raise once its bookkeeping is done) and the nodes refused so."""
        refusal = None
        refused = set()
        for node, deletion in deletions:
            try:
                deletion.get(timeout=REPLY_TIMEOUT)
            except (NoNodeError, BadVersionError):
                pass  # gone already, or changed: the next look decides
            except CONNECTION_ERRORS:
                raise
            except MOMENTARY_ERRORS as exc:
                refusal = refusal or exc
                refused.add(node)
            except KazooException as exc:
                log.error("%s: delete failed: %r", node, exc)
        return refusal, refused

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
            try:
                children = self._client.get_children_async(parent).get(timeout=REPLY_TIMEOUT)
            except NoNodeError:
                children = []  # no parent, so no member either
            except NoAuthError:
                # Not knowing is all there is: ending the listener would only bring
                # it back here.  The members are created again.
                log.error("%s: not allowed to list it, so %d member(s) whose create reply "
                          "was lost count as not created; if one was, it is there twice "
                          "until the session ends", parent, len(keys))
                children = []
            candidates = [node for node in (posixpath.join(parent, child) for child in
                                            lost_create_candidates(children, prefixes, floor))
                          if not self._members.is_member_node(node)]
            lookups = [(node, self._client.get_async(node)) for node in sorted(candidates)]
            ours = []
            for node, lookup in lookups:
                try:
                    data, stat = lookup.get(timeout=REPLY_TIMEOUT)
                except (NoNodeError, NoAuthError):  # gone, or another's we may not read
                    continue
                if stat.ephemeralOwner == session_id:
                    ours.append((node, data, stat))
            matched, duplicates = match_lost_creates(
                {key: self._uncertain[key][1] for key in keys}, ours)
            for key, (node, data, stat) in matched.items():
                self._owned[key] = Owned(data, stat.version)
                self._members.add(key, node)
                self._client.exists_async(node, watch=self._on_watch)
                log.info("registered %s (its create's reply was lost)", node)
            if not self._reattached:  # else the sweep after settling deals with the rest
                deletions = []
                for node, _, stat in duplicates:
                    log.info("deleting %s: a duplicate member from a create whose reply "
                             "was lost", node)
                    deletions.append((node, self._client.delete_async(node, stat.version)))
                refusal, _ = self._await_deletions(deletions)
                if refusal is not None:
                    # Their keys are settled now; nothing would list the parent again.
                    log.error("ZooKeeper refused deleting a duplicate member (%r); it stays "
                              "until the session ends", refusal)
            for key in keys:  # only now: a connection lost above means "look again"
                self._uncertain.pop(key, None)

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
