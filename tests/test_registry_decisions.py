"""The registry's decisions, without ZooKeeper: what it does for a key given
what it wrote, what ZooKeeper reports and what is wanted; member keys and
their nodes; the retry schedules; pipelined batches; how an outage is told."""

from __future__ import annotations

import json

from hypothesis import assume, given
from hypothesis import strategies as st
from kazoo.protocol.states import ZnodeStat
from kazoo.security import ACL, Id, Permissions

from zkwatcher_supervisor.backoff import Refusals, backoff
from zkwatcher_supervisor.outage import (
    PROGRESS_INTERVAL,
    Outage,
    Stretch,
    connected_line,
    progress_line,
)
from zkwatcher_supervisor.payload import same_registration
from zkwatcher_supervisor.registry_decisions import (
    MAX_RETRY_DELAY,
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
    sequence_prefix,
)
from zkwatcher_supervisor.zookeeper import LoginRetry

SESSION = 0x1000AB
OTHER = 0x2000CD


def stat(owner: int, version: int = 0, cversion: int = 0) -> ZnodeStat:
    """A node's stat as kazoo reports it (owner 0: a persistent node)."""
    return ZnodeStat(czxid=1, mzxid=1, ctime=0, mtime=0, version=version, cversion=cversion,
                     aversion=0, ephemeralOwner=owner, dataLength=0, numChildren=0, pzxid=1)


segment = st.text("abcxyz_-.:0123456789", min_size=1, max_size=6).filter(
    lambda s: s not in (".", ".."))
parents = st.lists(segment, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts))
fixed_keys = st.builds(lambda parent, name: f"{parent}/{name}", parents, segment)
member_keys = st.builds(lambda parent, name: f"{parent}/member_#{name}", parents, segment)
keys = st.one_of(fixed_keys, member_keys)
payloads = st.one_of(st.binary(max_size=12),
                     st.builds(lambda pid, port: json.dumps({"pid": pid, "port": port}).encode(),
                               st.integers(1, 5), st.integers(1, 3)))
wanted_data = st.one_of(st.none(), payloads)
owners = st.one_of(st.sampled_from([SESSION, OTHER, 0]), st.integers(0, 2 ** 63 - 1))
stats = st.one_of(st.none(), st.builds(stat, owners, st.integers(0, 5)))
memory = st.one_of(st.none(), st.builds(Owned, st.one_of(st.none(), payloads),
                                        st.integers(-1, 5)))


# -- deciding from what ZooKeeper reports ------------------------------------

@given(keys, stats, memory, st.one_of(st.none(), payloads), st.booleans())
def test_a_key_that_is_not_wanted_is_never_created_nor_written(key, node, owned, current,
                                                                  holding):
    decision = decide_from_stat(key, None, node, SESSION, owned, current, holding)
    assert decision.action is None or isinstance(decision.action, Delete)
    assert decide_from_memory(owned, None) in (None, Delete(owned.version if owned else 0))


@given(keys, wanted_data, st.integers(0, 5), owners, memory,
       st.one_of(st.none(), payloads), st.booleans())
def test_a_node_of_another_session_is_never_deleted_nor_written(key, data, version, owner,
                                                                  owned, current, holding):
    assume(owner != SESSION)
    decision = decide_from_stat(key, data, stat(owner, version), SESSION, owned, current,
                                holding)
    assert not isinstance(decision.action, (Delete, SetData))
    assert decision.forget  # whatever we knew of it, we hold no node there
    if sequence_prefix(key) is None:
        # Its path is taken: wait until it goes, saying who holds it.
        assert decision.action is None
        assert decision.held_by == (owner if data is not None else None)
    else:
        # Another member can be ours beside it.
        assert decision.action == (Create(data) if data is not None else None)


@given(keys, wanted_data, st.integers(0, 5), memory, st.one_of(st.none(), payloads),
       st.booleans())
def test_writes_and_deletes_of_our_nodes_are_for_the_version_zookeeper_reported(
        key, data, version, owned, current, holding):
    decision = decide_from_stat(key, data, stat(SESSION, version), SESSION, owned, current,
                                holding)
    if isinstance(decision.action, (SetData, Delete)):
        assert decision.action.version == version
    assert not isinstance(decision.action, (Create, CreateParent))  # it exists already


@given(keys, payloads, memory, st.booleans())
def test_a_wanted_key_without_a_node_is_created(key, data, owned, holding):
    decision = decide_from_stat(key, data, None, SESSION, owned, None, holding)
    assert decision.action == Create(data)
    assert decision.forget


@given(keys, st.integers(0, 5))
def test_a_reattached_node_nobody_wants_stays_until_health_is_known(key, version):
    reattached = Owned(None, -1)
    held = decide_from_stat(key, None, stat(SESSION, version), SESSION, reattached,
                            holding=True)
    assert held.action is None and not held.forget
    released = decide_from_stat(key, None, stat(SESSION, version), SESSION, reattached,
                                holding=False)
    assert released.action == Delete(version)


def test_a_reattached_node_that_registers_the_same_thing_is_kept_as_it_is():
    theirs = json.dumps({"pid": 10, "created": "2026-01-01 00:00:00", "role": "a"}).encode()
    ours = json.dumps({"pid": 20, "created": "2026-01-02 00:00:00", "role": "a"}).encode()
    decision = decide_from_stat("/s/h:1", ours, stat(SESSION, 3), SESSION, Owned(None, -1),
                                current=theirs)
    assert decision.action is None
    assert decision.adopt == Owned(ours, 3)
    changed = json.dumps({"pid": 20, "created": "2026-01-02 00:00:00", "role": "b"}).encode()
    assert decide_from_stat("/s/h:1", changed, stat(SESSION, 3), SESSION, Owned(None, -1),
                            current=theirs).action == SetData(changed, 3)


def apply(action, node, owned):
    """What ZooKeeper and the registry's memory hold after ``action`` succeeded."""
    if isinstance(action, Create):
        return stat(SESSION, 0), Owned(action.data, 0)
    if isinstance(action, SetData):
        return stat(SESSION, node.version + 1), Owned(action.data, node.version + 1)
    if isinstance(action, Delete):
        return None, None
    return node, owned


@given(keys, wanted_data, stats, memory, st.one_of(st.none(), payloads), st.booleans())
def test_once_a_decision_is_carried_out_the_next_look_has_nothing_to_do(
        key, data, node, owned, current, holding):
    decision = decide_from_stat(key, data, node, SESSION, owned, current, holding)
    if decision.forget:
        owned = None
    if decision.adopt is not None:
        owned = decision.adopt
    node, owned = apply(decision.action, node, owned)
    if node is not None and node.ephemeralOwner != SESSION and sequence_prefix(key) is not None:
        return  # a new member of ours was created beside it: its stat is the one looked at
    again = decide_from_stat(key, data, node, SESSION, owned, current, holding)
    assert again.action is None


@given(memory, wanted_data)
def test_deciding_from_memory_alone(owned, data):
    action = decide_from_memory(owned, data)
    if data is None:
        assert action == (Delete(owned.version) if owned is not None else None)
    elif owned is None:
        assert action == Create(data)
    elif owned.data == data:
        assert action is None
    else:
        assert action == SetData(data, owned.version)


def test_actions_of_different_kinds_never_compare_equal():
    assert Create(b"x") != CreateParent(b"x")
    assert (Create.verb, CreateParent.verb, SetData.verb, Delete.verb) == (
        "create", "create", "set", "delete")


# -- member keys and their nodes ----------------------------------------------

@given(parents, segment.filter(lambda s: "#" not in s),
       st.text(st.characters(blacklist_characters="/"), max_size=8))
def test_a_member_key_maps_to_its_parent_and_prefix(parent, prefix, rest):
    assert sequence_prefix(f"{parent}/{prefix}#{rest}") == f"{parent}/{prefix}"
    assert sequence_prefix(f"{parent}/#{rest}") == f"{parent}/"


@given(st.lists(st.text("ab#/", min_size=1, max_size=4), min_size=1, max_size=3),
       segment.filter(lambda s: "#" not in s))
def test_a_key_whose_last_element_has_no_mark_is_a_node(parents_with_marks, name):
    key = "/" + "/".join(parents_with_marks) + "/" + name
    assert sequence_prefix(key) is None


@given(member_keys, fixed_keys, st.integers(0, 10 ** 10 - 1))
def test_member_nodes_map_keys_and_nodes_both_ways(member, fixed, sequence):
    node = f"{sequence_prefix(member)}{sequence:010d}"
    members = MemberNodes({member: node, fixed: fixed})  # as a session file saves them
    assert members.node(member) == node and members.key(node) == member
    assert members.node(fixed) == fixed and members.key(fixed) == fixed
    assert members.as_dict() == {member: node}
    assert members.has_node(member) and members.is_member_node(node)
    members.forget(member)
    assert members.node(member) is None and members.key(node) == node
    assert not members.has_node(member) and not members.is_member_node(node)


# -- children a lost create may have made ---------------------------------------

children = st.builds(lambda base, digits: base + digits,
                     st.sampled_from(["member_", "member", "other_", "member_x", ""]),
                     st.text("0123456789", max_size=11))


@given(st.lists(children, max_size=12), st.integers(0, 10 ** 10 - 1))
def test_lost_create_candidates_are_our_prefix_and_numbered_from_the_cversion(names, floor):
    found = lost_create_candidates(names, {"member_"}, floor)
    for name in names:
        base, digits = name[:len("member_")], name[len("member_"):]
        expected = (base == "member_" and len(digits) == 10 and digits.isdigit()
                    and int(digits) >= floor)
        assert (name in found) == expected


@given(st.dictionaries(member_keys, payloads, max_size=4),
       st.lists(st.tuples(segment, payloads, st.integers(0, 3)), max_size=5))
def test_each_lost_create_claims_at_most_one_member_of_the_same_registration(attempted,
                                                                              found):
    found = [(f"/p/{name}{index}", data, version)
             for index, (name, data, version) in enumerate(found)]
    matched, left = match_lost_creates(attempted, found)
    claimed = list(matched.values())
    assert sorted(claimed + left) == sorted(found)  # each member once, claimed or left
    for key, (_, data, _) in matched.items():
        assert same_registration(data, attempted[key])
    for key in attempted.keys() - matched.keys():  # unclaimed only if nothing left matches
        assert not any(same_registration(data, attempted[key]) for _, data, _ in left)


def test_a_lost_create_is_matched_by_what_it_registers_not_by_who_wrote_it():
    mine = json.dumps({"pid": 1, "host": "a"}).encode()
    found = [("/p/member_0000000001", json.dumps({"pid": 2, "host": "b"}).encode(), None),
             ("/p/member_0000000002", json.dumps({"pid": 2, "host": "a"}).encode(), None),
             ("/p/member_0000000003", json.dumps({"pid": 3, "host": "a"}).encode(), None)]
    matched, left = match_lost_creates({"/p/member_#a:1": mine}, found)
    assert matched == {"/p/member_#a:1": found[1]}
    assert left == [found[0], found[2]]  # the other of ours is a duplicate


# -- the retry schedule -----------------------------------------------------------

@given(st.integers(1, 5000), st.floats(0.01, 10.0), st.floats(0.01, 100.0))
def test_backoff_doubles_from_base_and_stays_within_the_cap(failures, base, cap):
    delay = backoff(failures, base, cap)
    assert min(base, cap) <= delay <= cap
    assert backoff(failures + 1, base, cap) in (min(delay * 2, cap), cap)


def test_backoff_after_thousands_of_failures_is_the_cap():
    # A key refused for hours (NoAuth) is retried at the cap, not an overflow.
    assert backoff(10 ** 6, RETRY_DELAY, MAX_RETRY_DELAY) == MAX_RETRY_DELAY


@given(st.integers(1, 12))
def test_a_key_failing_in_a_row_waits_longer_each_time_up_to_the_cap(failures):
    schedule = RetrySchedule()
    now = 100.0
    for _ in range(failures):
        schedule.take_due(float("inf"))
        schedule.record({"/k"}, set(), now)
    expected = min(RETRY_DELAY * 2 ** (failures - 1), MAX_RETRY_DELAY)
    assert schedule.next_at() == now + expected
    assert schedule.take_due(now + expected - 0.001) == set()
    assert schedule.take_due(now + expected) == {"/k"}
    assert schedule.next_at() is None


def test_a_success_or_a_new_wish_starts_the_backoff_again():
    schedule = RetrySchedule()
    for _ in range(5):
        schedule.record({"/a", "/b"}, set(), 0.0)
    schedule.take_due(float("inf"))
    schedule.record(set(), {"/a"}, 0.0)
    schedule.reset("/b")
    schedule.record({"/a", "/b"}, set(), 0.0)
    assert schedule.take_due(RETRY_DELAY) == {"/a", "/b"}


def test_a_scheduled_retry_is_never_put_off_and_a_new_connection_clears_all():
    schedule = RetrySchedule()
    schedule.record({"/a"}, set(), 0.0)
    schedule.record({"/a"}, set(), 0.0)  # a second failure before the first retry ran
    assert schedule.next_at() == RETRY_DELAY
    schedule.clear()
    assert schedule.next_at() is None and schedule.take_due(float("inf")) == set()
    schedule.record({"/a"}, set(), 0.0)
    assert schedule.next_at() == RETRY_DELAY  # the failures were forgotten too


# -- pipelining and parents ---------------------------------------------------------

@given(st.lists(st.integers(), max_size=300), st.integers(1, 70))
def test_batches_keep_every_item_in_order_and_none_is_too_large(items, size):
    runs = list(batches(items, size))
    assert [item for run in runs for item in run] == items
    assert all(0 < len(run) <= size for run in runs)


def test_a_parent_open_to_the_world_is_a_risk_named_once_per_permission():
    world = Id("world", "anyone")
    assert open_parent_risks([ACL(Permissions.ALL, world)]) == [
        ("DELETE", "delete our nodes"), ("CREATE", "create a node at our path before we do")]
    assert open_parent_risks([ACL(Permissions.READ, world),
                              ACL(Permissions.ALL, Id("digest", "deploy:x"))]) == []
    assert open_parent_risks([ACL(Permissions.READ, world),
                              ACL(Permissions.DELETE, world)]) == [("DELETE", "delete our nodes")]


# -- telling an outage -------------------------------------------------------------

def test_an_outage_is_one_line_a_minute_however_late_the_worker_looks():
    outage = Outage(now=0.0)
    outage.end(now=1.0)
    outage.begin(now=10.0)
    assert outage.wait(now=10.0) == PROGRESS_INTERVAL
    assert outage.due(now=10.0 + PROGRESS_INTERVAL - 1) is None
    assert outage.due(now=10.0 + PROGRESS_INTERVAL).away == PROGRESS_INTERVAL
    assert outage.due(now=10.0 + PROGRESS_INTERVAL + 1) is None  # said already
    late = 10.0 + 3.5 * PROGRESS_INTERVAL
    assert outage.due(now=late) is not None
    assert outage.due(now=late) is None  # the missed minutes are not said one by one
    assert outage.wait(now=late) == 0.5 * PROGRESS_INTERVAL


def test_an_outage_begins_once_and_ends_with_how_long_it_lasted():
    outage = Outage(now=0.0)
    first = outage.end(now=2.0)
    assert first == (2.0, False, False)  # the first connection, 2 s after start
    assert outage.wait(now=3.0) is None and outage.due(now=1000.0) is None
    outage.begin(now=10.0)  # suspended
    outage.begin(now=15.0, expired=True)  # then the session lost: the same outage
    assert outage.end(now=20.0) == (10.0, True, True)
    outage.begin(now=30.0)
    assert outage.end(now=31.0) == (1.0, False, True)  # a new outage forgets the expiry


def test_what_a_connection_says_after_an_outage():
    assert connected_line(Stretch(2.0, False, False), 5, 0) == "connected to ZooKeeper"
    assert connected_line(Stretch(125.0, False, False), 5, 0) == (
        "connected to ZooKeeper after 125 s")
    assert connected_line(Stretch(12.5, True, True), 5, 3) == (
        "reconnected to ZooKeeper after 12.5 s away; a new session: registering 5 node(s)")
    assert connected_line(Stretch(1.0, False, True), 5, 3) == (
        "reconnected to ZooKeeper after 1.0 s away; the session lived: 3 node(s) kept")


def test_what_an_outage_says_while_it_lasts():
    assert progress_line(Stretch(60.0, False, False), 4, 0, 10.0) == (
        "no ZooKeeper session yet after 60 s; 4 node(s) to register")
    assert "the session expired: 4 node(s) to register" in progress_line(
        Stretch(60.0, True, True), 4, 2, 10.0)
    assert "2 node(s) kept while the session lives (session_timeout 90 s)" in progress_line(
        Stretch(60.0, False, True), 4, 2, 90.0)
    assert "2 node(s) kept if the session still lives" in progress_line(
        Stretch(120.0, False, True), 4, 2, 90.0)


# -- logging in again after kazoo gave up ------------------------------------------

def test_refused_logins_are_retried_ever_more_slowly_and_only_the_first_is_told():
    login = LoginRetry()
    now, firsts, pauses = 0.0, [], []
    for _ in range(6):
        firsts.append(login.failed(dropped=False, now=now))
        pauses.append(login.wait(now))
        assert not login.due(now + pauses[-1] - 0.001)
        now += pauses[-1]
        assert login.due(now) and not login.due(now)  # due once
        assert login.wait(now) is None
    assert firsts == [True, False, False, False, False, False]
    assert pauses == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert login.refused


def test_a_login_cut_short_is_retried_quickly_and_apart_from_refusals():
    login = LoginRetry()
    login.failed(dropped=False, now=0.0)
    pauses = []
    for _ in range(4):
        first = login.failed(dropped=True, now=0.0)
        pauses.append(login.wait(0.0))
    assert first is False and pauses == [0.1, 0.2, 0.4, 0.5]
    login.accepted()
    assert login.failed(dropped=True, now=0.0) and login.wait(0.0) == 0.1
    assert login.failed(dropped=False, now=0.0) and login.wait(0.0) == 2.0


def test_a_refused_step_waits_its_backoff_doubling_and_a_success_resets_it():
    step = Refusals(0.5, 30.0)
    assert not step.waiting(100.0)
    assert [step.refused(100.0) for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert step.waiting(129.9) and not step.waiting(130.0)  # the last refusal's 30 s
    step.succeeded()
    assert not step.waiting(100.0)
    assert step.refused(200.0) == 0.5 and step.until == 200.5
