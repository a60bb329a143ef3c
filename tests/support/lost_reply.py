"""A listener's node through the faults of its ZooKeeper link, as a reader sees it:
a create whose reply is lost, a session expiry and a crash of the listener."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from support.driver import ProtocolDriver
from support.proxies import CREATE_OPCODES, ZooKeeperLink
from zkwatcher_supervisor.testing import FaultProxy, wait_until


def lose_the_create_reply(flag: Path, link: ZooKeeperLink) -> None:
    """A listener connected through ``link`` checks ``flag`` (absent): the flag
    appears, and the connection drops once the create it brings has reached
    ZooKeeper, so the create's reply is lost on the way back."""
    time.sleep(1.5)  # connected, first check failed
    flag.touch()
    wait_until(lambda: any(op in CREATE_OPCODES for _, op in link.requests), 5,
               interval=0.005, what="create sent")
    time.sleep(0.1)
    link.drop()


def lost_reply_expiry_and_crash(zk, path: str, read: Callable[[object, str], dict],
                                drv: ProtocolDriver, config: Path, flag: Path,
                                link: ZooKeeperLink,
                                proxy: FaultProxy) -> tuple[str, ProtocolDriver]:
    """``drv`` runs one section checking ``flag`` (absent), registered under ``path``
    through ``proxy`` in front of ``link``.  The flag appears; the connection drops
    while the create's reply is on its way back; the session expires; the listener is
    killed and restarted.  ``read(zk, path)`` (a reader's view, by child name) must
    show exactly one node throughout: a new one after the expiry, the same one after
    the restart.  Returns the first node's name and the restarted listener, running
    (the caller stops it)."""
    lose_the_create_reply(flag, link)
    wait_until(lambda: len(read(zk, path)) == 1, 5, what="node")
    time.sleep(2)  # reconnected, and any duplicate would have been made by now
    assert len(read(zk, path)) == 1
    (before,) = read(zk, path)
    wait_until(lambda: "its create's reply was lost" in drv.stderr(), 5,
               what="the lost reply logged")

    # Session expiry: the node goes with the session and comes back once.
    proxy.cut()
    wait_until(lambda: not read(zk, path), 10, what="expired")
    proxy.restore()
    wait_until(lambda: read(zk, path), 10, what="back after expiry")
    (after,) = read(zk, path)
    assert after != before

    # Crash and restart: the same node, through the saved session.
    drv.process.kill()
    drv.process.wait()
    restarted = ProtocolDriver(config)
    try:
        restarted.wait_ready()
        wait_until(lambda: "reattached to session" in restarted.stderr(), 5,
                   what="reattached")
        time.sleep(2)
        assert list(read(zk, path)) == [after]
    except BaseException:
        restarted.stop()
        raise
    return before, restarted
