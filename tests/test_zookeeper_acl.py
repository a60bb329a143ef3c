"""With [auth], a parent we register under that lets anyone delete (or create)
in it is named once at start: ZooKeeper lets whoever may delete in a parent
delete its children, whatever their own ACL says."""

from __future__ import annotations

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import (
    CREATOR_ALL_ACL,
    OPEN_ACL_UNSAFE,
    READ_ACL_UNSAFE,
    Permissions,
    make_acl,
)
from support.sections import section
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e

AUTH = "[auth]\nuser = deploy\npassword = s3cret\n"


def test_open_parents_are_named_once_and_locked_ones_not(
        zookeeper, zk, write_config, driver, base_path):
    owner = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", "deploy:s3cret")])
    owner.start(timeout=30)
    try:
        # Made beforehand by someone else, as kazoo and zkCli do by default: world all.
        zk.create(f"{base_path}/open", makepath=True, acl=OPEN_ACL_UNSAFE)
        # Anyone may create in it (and our credentials may do everything).
        owner.create(f"{base_path}/create-open", acl=[
            *CREATOR_ALL_ACL, make_acl("world", "anyone", read=True, create=True)])
        # Locked as we would lock it.
        owner.create(f"{base_path}/locked", acl=CREATOR_ALL_ACL + READ_ACL_UNSAFE)
        # "ours" does not exist: the listener creates it with its ACL.
        drv = driver(write_config(section(base_path, "open", 1, cmd="true", timeout=None)
                                  + section(base_path, "create-open", 2, cmd="true", timeout=None)
                                  + section(base_path, "locked", 3, cmd="true", timeout=None)
                                  + section(base_path, "ours", 4, cmd="true", timeout=None) + AUTH))
        nodes = [f"{base_path}/{name}/host1:{port}" for name, port in
                 [("open", 1), ("create-open", 2), ("locked", 3), ("ours", 4)]]
        wait_until(lambda: all(node_exists(zk, node) for node in nodes), 10,
                   what="registration")
        wait_until(lambda: "grants" in drv.stderr(), 10, what="the warning")
        # Every parent is looked at in the same pass: once one is named, all are done.
        warnings = [line[24:] for line in drv.stderr().splitlines() if "grants" in line]
        assert warnings == [
            f"WARNING {base_path}/create-open grants CREATE to world:anyone: anyone can "
            "create a node at our path before we do, [auth] notwithstanding; give it an ACL "
            "like ours (creator all, world read)",
            f"WARNING {base_path}/open grants DELETE and CREATE to world:anyone: anyone can "
            "delete our nodes or create a node at our path before we do, [auth] "
            "notwithstanding; give it an ACL like ours (creator all, world read)",
        ]
        # What the warning is about: without any credentials, our node goes.
        zk.delete(nodes[0])
        with pytest.raises(NoAuthError):
            zk.delete(nodes[3])
        assert owner.get_acls(f"{base_path}/ours")[0][0].perms == Permissions.ALL
        # Once at start, not on every pass: the deleted node comes back, no new warning.
        wait_until(lambda: node_exists(zk, nodes[0]), 5, what="re-registered")
        drv.tick()
        assert sum("grants" in line for line in drv.stderr().splitlines()) == 2
    finally:
        owner.stop()
        owner.close()
