"""ACLs with [auth]: the creator gets all and the world read on our nodes and the
parent we make, parents that exist keep theirs, and a parent that lets anyone
delete (or create) in it is named once at start: ZooKeeper lets whoever may delete
in a parent delete its children, whatever their own ACL says.  Real ZooKeeper."""

from __future__ import annotations

import json
import textwrap
import time

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import (
    ACL,
    CREATOR_ALL_ACL,
    OPEN_ACL_UNSAFE,
    READ_ACL_UNSAFE,
    Id,
    Permissions,
    make_acl,
    make_digest_acl_credential,
)
from support.driver import tick_until
from support.lost_reply import lose_the_create_reply
from support.proxies import ZooKeeperLink
from support.sections import section
from support.watches import node_exists

from zkwatcher_supervisor.testing import FaultProxy, wait_until

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


def test_an_existing_parents_acl_is_left_as_it_is(
        write_config, driver, zk, zookeeper, base_path):
    parent = f"{base_path}/svc"
    own_acl = [ACL(Permissions.READ | Permissions.CREATE | Permissions.DELETE,
                   Id("world", "anyone"))]
    zk.create(parent, b"theirs", acl=own_acl, makepath=True)
    before_acl, _ = zk.get_acls(parent)
    drv = driver(write_config(section(base_path, "svc", 1, cmd="true") + textwrap.dedent("""
        [auth]
        user = deploy
        password = s3cret
        """)))
    wait_until(lambda: node_exists(zk, f"{parent}/host1:1"), 10, what="registered")
    acl, stat = zk.get_acls(parent)
    assert acl == before_acl == own_acl
    assert (stat.aversion, stat.version, zk.get(parent)[0]) == (0, 0, b"theirs")
    assert drv.process.poll() is None


def test_auth_gives_creator_all_and_world_read(write_config, driver, zk, zookeeper, base_path):
    config = write_config(section(base_path, "svc", 8080, cmd="true", timeout=1)
                          + textwrap.dedent("""
        [auth]
        user = deploy
        password = s3cret
        """))
    drv = driver(config)
    node = f"{base_path}/svc/host1:8080"
    tick_until(drv, lambda: node_exists(zk, node), 5, "registration")
    # ZooKeeper shows digest ids only to a client holding that identity.
    owner = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", "deploy:s3cret")])
    owner.start(timeout=30)
    acls, _ = owner.get_acls(node)
    digest = make_digest_acl_credential("deploy", "s3cret")
    assert sorted(acls, key=str) == sorted([
        ACL(Permissions.ALL, Id("digest", digest)),
        ACL(Permissions.READ, Id("world", "anyone")),
    ], key=str)
    data, _ = zk.get(node)  # an unauthenticated consumer can read it ...
    assert json.loads(data)["pid"] == drv.process.pid
    with pytest.raises(NoAuthError):  # ... but not remove it
        zk.delete(node)
    # Deleting needs DELETE on the parent, so the parents we created carry our ACL too.
    parent_acls, _ = owner.get_acls(f"{base_path}/svc")
    assert sorted(parent_acls, key=str) == sorted(acls, key=str)
    owner.stop()
    owner.close()


def test_two_credentials_register_side_by_side_under_a_new_tree(
        write_config, driver, zk, zookeeper, base_path, tmp_path):
    """As nd_service_registry: our credentials lock the node and its immediate
    parent; the parents above it that we create stay open, so the first host of
    one team does not lock the tree for another team's credentials."""
    drivers = []
    for team in ("alpha", "beta"):
        config = write_config(section(f"{base_path}/services", team, 8080, cmd="true", timeout=1)
                              + textwrap.dedent(f"""
            [auth]
            user = {team}
            password = pw-{team}
            """), name=f"{team}.cfg")
        drivers.append(driver(config))
        wait_until(lambda team=team: node_exists(zk, f"{base_path}/services/{team}/host1:8080"),
                   10, what=f"{team} registered")
    world_all = [ACL(Permissions.ALL, Id("world", "anyone"))]
    assert zk.get_acls(base_path)[0] == world_all
    assert zk.get_acls(f"{base_path}/services")[0] == world_all
    for team in ("alpha", "beta"):
        owner = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", f"{team}:pw-{team}")])
        owner.start(timeout=30)
        try:
            digest = make_digest_acl_credential(team, f"pw-{team}")
            expected = sorted([ACL(Permissions.ALL, Id("digest", digest)),
                               ACL(Permissions.READ, Id("world", "anyone"))], key=str)
            for path in (f"{base_path}/services/{team}",
                         f"{base_path}/services/{team}/host1:8080"):
                assert sorted(owner.get_acls(path)[0], key=str) == expected, path
        finally:
            owner.stop()
            owner.close()


def test_a_parent_we_may_not_list_leaves_the_restarted_listener_running(
        zookeeper, zk, write_config, driver, base_path):
    """Restarted after a crash, the listener lists its parents to delete nodes of
    its session that nothing wants.  A parent whose ACL lets it create and delete
    but not list (NoAuth) is logged and left alone: the listener runs on and its
    node stays the very same."""
    other = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", "other:pw")])
    other.start(timeout=30)
    try:
        parent = f"{base_path}/nolist"
        zk.ensure_path(base_path)
        other.create(parent, acl=[*CREATOR_ALL_ACL,
                                  make_acl("world", "anyone", create=True, delete=True)])
        config = write_config(section(base_path, "a", 1, cmd="true", path=parent),
                              session_timeout=10)
        first = driver(config)
        node = f"{parent}/host1:1"
        wait_until(lambda: node_exists(zk, node), 10, what="registered")
        with pytest.raises(NoAuthError):
            zk.get_children(parent)
        czxid = zk.exists(node).czxid
        first.process.kill()
        first.process.wait()
        second = driver(config)
        wait_until(lambda: "reattached to session" in second.stderr(), 10, what="reattached")
        wait_until(lambda: "not allowed to list it, so nodes of our session" in second.stderr(), 10,
                   what="the refused listing logged")
        time.sleep(1)  # whatever the sweep would still do
        second.tick()  # answered: the listener runs on
        assert second.process.poll() is None, second.stderr()
        assert zk.exists(node).czxid == czxid
    finally:
        other.stop()
        other.close()


def test_a_lost_create_reply_under_a_parent_we_may_not_list_is_no_crash(
        zookeeper, zk, write_config, driver, base_path, tmp_path):
    """A ServerSet member's create reply is lost, and the parent lets the listener
    create but not list: it cannot find out whether the create happened.  It says
    so, creates the member again and runs on (crashing would only bring it back to
    the same question)."""
    other = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", "other:pw")])
    other.start(timeout=30)
    link = ZooKeeperLink(zookeeper.port, delay=0.3, request_delay=0.0)
    proxy = FaultProxy(link.port)
    try:
        parent = f"{base_path}/web"
        zk.ensure_path(base_path)
        other.create(parent, acl=[*CREATOR_ALL_ACL,
                                  make_acl("world", "anyone", create=True, delete=True)])
        flag = tmp_path / "up"
        config = write_config(section(base_path, "web80", 80, cmd=f"test -f {flag}", timeout=1,
                                      hostname="h2", path=parent, payload_format="serverset"),
                              hosts=proxy.hosts, session_timeout=10)
        drv = driver(config)
        lose_the_create_reply(flag, link)
        wait_until(lambda: "not allowed to list it, so 1 member(s) whose create reply was "
                   "lost count as not created" in drv.stderr(), 10, what="the doubt logged")
        wait_until(lambda: other.get_children(parent), 5, what="a member")
        time.sleep(1)
        drv.tick()  # answered: the listener runs on
        assert drv.process.poll() is None, drv.stderr()
        assert 1 <= len(other.get_children(parent)) <= 2
    finally:
        proxy.close()
        link.close()
        other.stop()
        other.close()
