"""The health state machine: rise/fall, process binding, check scheduling."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zkwatcher_supervisor.config import ProgramSpec, ServiceSettings
from zkwatcher_supervisor.health import OVERDUE_GRACE, Health


def service(name="s", program=None, cmd="check", refresh=30, rise=1, fall=1):
    return ServiceSettings(
        name=name, zookeeper_path=f"/{name}", service_port=1, service_hostname="h",
        program=ProgramSpec.parse(program) if program else None, cmd=cmd,
        refresh=refresh, timeout=5, rise=rise, fall=fall,
    )


def run_check(health, passed, now=0.0, name="s"):
    (run,) = [r for r in health.due_checks(now) if r.section == name]
    health.check_result(name, run.token, passed)


def test_cmd_section_starts_down_and_first_check_is_due_at_once():
    health = Health([service()])
    assert health.up_sections() == set()
    runs = health.due_checks(now=0.0)
    assert [(r.section, r.command, r.timeout) for r in runs] == [("s", "check", 5)]
    health.check_result("s", runs[0].token, True)
    assert health.up_sections() == {"s"}


def test_rise_and_fall_count_consecutive_results():
    health = Health([service(rise=3, fall=2, refresh=1)])
    now = 0.0
    for passed, expected_up in [
        (True, False), (True, False), (False, False),  # a failure restarts the rise count
        (True, False), (True, False), (True, True),
        (False, True), (True, True),  # one failure is not enough with fall=2
        (False, True), (False, False),
    ]:
        run_check(health, passed, now)
        assert (health.up_sections() == {"s"}) is expected_up, (now, passed)
        now += 1


def test_checks_follow_refresh_and_never_overlap():
    health = Health([service(refresh=30)])
    (run,) = health.due_checks(0.0)
    assert health.due_checks(100.0) == []  # still running: no second copy
    assert health.next_due() is None  # nothing to wake up for while it runs
    health.check_result("s", run.token, True, 0.5)
    assert health.next_due() == 30.0
    assert health.due_checks(29.9) == []
    assert len(health.due_checks(30.0)) == 1


def test_refresh_zero_runs_every_second():
    health = Health([service(refresh=0)])
    (run,) = health.due_checks(0.0)
    health.check_result("s", run.token, True, 0.1)
    assert health.next_due() == 1.0


def test_a_busy_section_waits_until_rescheduled():
    """A run killed at its deadline but not reaped yet blocks the next run."""
    health = Health([service(refresh=1)])
    (run,) = health.due_checks(0.0)
    health.check_result("s", run.token, False, 0.5)  # counted failed at its deadline
    assert health.due_checks(1.0, busy={"s"}) == []
    assert health.next_due() is None  # no busy-looping timer while it is stuck
    health.reschedule("s")  # reaped at last
    assert [r.section for r in health.due_checks(1.5)] == ["s"]


def test_reset_abandons_the_running_check_once():
    health = Health([service(program="web", cmd="check")])
    health.process_state("web", "web", "RUNNING", 7, 0.0)
    health.due_checks(0.0)
    assert health.take_cancelled() == []
    health.process_state("web", "web", "STOPPING", 0, 1.0)
    assert health.take_cancelled() == ["s"]
    assert health.take_cancelled() == []


def test_overdue_when_no_result_for_refresh_plus_grace_plus_timeout():
    health = Health([service(refresh=10)])  # timeout 5
    section = health.sections["s"]
    (run,) = health.due_checks(0.0)
    limit = 10 + OVERDUE_GRACE + 5
    assert not section.overdue(limit)
    assert section.overdue(limit + 0.1)
    health.check_result("s", run.token, True, limit)
    assert not section.overdue(limit + 0.1)


@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3), st.booleans()),
                max_size=60))
def test_scheduler_starts_exactly_the_checks_a_full_scan_finds_due(steps):
    """The heap-based scheduler agrees with the plain definition of "due"."""
    names = ["a", "b", "c"]
    health = Health([service(name=n, refresh=r) for n, r in zip(names, [1, 2, 3])])
    now, running = 0.0, {}
    for name, advance, passed in steps:
        now += advance * 0.5
        due = {n for n, s in health.sections.items() if s.check_due(now)}
        runs = health.due_checks(now)
        assert {r.section for r in runs} == due
        running.update({r.section: r for r in runs})
        if name in running:
            health.check_result(name, running.pop(name).token, passed, now)
        upcoming = [s.next_check_at for s in health.sections.values()
                    if s.running_token is None]
        assert health.next_due() == (min(upcoming) if upcoming else None)


def test_program_only_section_follows_process_state():
    health = Health([service(program="web", cmd=None)])
    assert health.up_sections() == set()
    health.process_state("web", "web", "STARTING", 0, 0.0)
    assert health.up_sections() == set()
    health.process_state("web", "web", "RUNNING", 123, 1.0)
    assert health.up_sections() == {"s"}
    for state in ["STOPPING", "EXITED", "BACKOFF", "FATAL", "STOPPED", "UNKNOWN"]:
        health.process_state("web", "web", "RUNNING", 123, 2.0)
        health.process_state("web", "web", state, 0, 3.0)
        assert health.up_sections() == set(), state
    health.process_state("other", "other", "RUNNING", 5, 4.0)
    assert health.up_sections() == set()


def test_group_star_needs_every_process_running():
    health = Health([service(program="web:*", cmd=None)])
    health.process_state("web", "web_00", "RUNNING", 1, 0.0)
    health.process_state("web", "web_01", "RUNNING", 2, 0.0)
    assert health.up_sections() == {"s"}
    health.process_state("web", "web_01", "STOPPED", 0, 1.0)
    assert health.up_sections() == set()


def test_program_and_cmd_together():
    health = Health([service(program="web", cmd="check", refresh=30)])
    assert health.due_checks(0.0) == []  # no check while the program is not running
    health.process_state("web", "web", "RUNNING", 7, 1.0)
    (run,) = health.due_checks(1.0)  # entering RUNNING: check at once
    assert health.up_sections() == set()
    health.check_result("s", run.token, True)
    assert health.up_sections() == {"s"}
    health.process_state("web", "web", "STOPPING", 0, 2.0)
    assert health.up_sections() == set()
    health.process_state("web", "web", "RUNNING", 8, 3.0)
    assert health.up_sections() == set()  # check state was reset to down
    run_check(health, True, 3.0)
    assert health.up_sections() == {"s"}


def test_result_of_a_check_started_before_a_reset_is_dropped():
    health = Health([service(program="web", cmd="check")])
    health.process_state("web", "web", "RUNNING", 7, 0.0)
    (old,) = health.due_checks(0.0)
    health.process_state("web", "web", "EXITED", 0, 1.0)
    health.process_state("web", "web", "RUNNING", 9, 2.0)
    health.check_result("s", old.token, True)
    assert health.up_sections() == set()


def test_death_notice_only_counts_for_the_pid_we_saw_running():
    health = Health([service(program="web", cmd=None)])
    health.process_state("web", "web", "RUNNING", 100, 0.0)
    health.process_died("web", "web", 99, 1.0)  # an older incarnation
    assert health.up_sections() == {"s"}
    health.process_died("web", "web", 100, 1.0)
    assert health.up_sections() == set()


@given(st.lists(st.booleans(), max_size=40), st.integers(1, 4), st.integers(1, 4))
def test_rise_fall_matches_a_direct_definition(results, rise, fall):
    """Up iff the last `rise` results passed, or it rose before and fewer than
    `fall` failures have happened in a row since."""
    health = Health([service(rise=rise, fall=fall, refresh=1)])
    expected = False
    for i, passed in enumerate(results):
        run_check(health, passed, float(i))
        tail = results[: i + 1]
        if len(tail) >= rise and all(tail[-rise:]):
            expected = True
        if len(tail) >= fall and not any(tail[-fall:]):
            expected = False
        assert (health.up_sections() == {"s"}) is expected


STATES = ["STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("state"), st.sampled_from(["p_00", "p_01"]), st.sampled_from(STATES)),
        st.tuples(st.just("check"), st.booleans(), st.none()),
    ),
    max_size=60,
)


@given(steps)
def test_up_means_every_process_running_and_check_passing(sequence):
    health = Health([service(program="p:*", cmd="c", rise=1, fall=1, refresh=1)])
    states: dict[str, str] = {}
    last_check_since_running = None
    now = 0.0
    for kind, a, b in sequence:
        now += 1
        if kind == "state":
            was_all_running = bool(states) and all(s == "RUNNING" for s in states.values())
            states[a] = b
            if was_all_running != (bool(states) and all(s == "RUNNING" for s in states.values())):
                last_check_since_running = None
            health.process_state("p", a, b, 1, now)
        else:
            runs = health.due_checks(now)
            if runs:
                health.check_result("s", runs[0].token, a)
                last_check_since_running = a
        all_running = bool(states) and all(s == "RUNNING" for s in states.values())
        expected = all_running and last_check_since_running is True
        assert (health.up_sections() == {"s"}) is expected


def test_a_reload_that_only_finds_new_groups_or_home_for_the_user_keeps_its_health():
    from dataclasses import replace

    from zkwatcher_supervisor.privilege import CheckUser

    before = CheckUser("deploy", 1000, 1000, (1000,), "/home/deploy", "/home/deploy")
    health = Health([replace(service(), user=before)])
    run_check(health, True)
    assert health.up_sections() == {"s"}
    after = CheckUser("deploy", 1000, 1000, (1000, 27), "/srv/deploy", "/")
    reloaded = replace(service(), user=after, check_env={"HOME": "/srv/deploy"})
    health.reconfigure([reloaded], now=1.0)
    assert health.up_sections() == {"s"}  # the same check: no flap
    (run,) = health.due_checks(health.next_due())
    assert (run.user, run.env) == (after, {"HOME": "/srv/deploy"})  # the new groups and home
    for other in (replace(after, name="other"), replace(after, uid=1001),
                  replace(after, gid=27)):
        health.reconfigure([replace(reloaded, user=other)], now=2.0)
        assert health.up_sections() == set()  # another user or group: afresh
        (run,) = health.due_checks(2.0)
        health.check_result("s", run.token, True)


def test_a_reload_that_changes_who_runs_the_check_starts_it_afresh():
    from dataclasses import replace

    from zkwatcher_supervisor.privilege import CheckUser

    nobody = CheckUser("nobody", 65534, 65534, (65534,), "/nonexistent", "/")
    health = Health([service()])
    run_check(health, True)
    assert health.up_sections() == {"s"}
    same = replace(service(), zookeeper_path="/moved")  # not the check: health carries over
    health.reconfigure([same], now=1.0)
    assert health.up_sections() == {"s"}
    for changed in (replace(same, user=nobody), replace(same, user=nobody,
                                                        environment=(("A", "1"),))):
        health.reconfigure([changed], now=2.0)
        assert health.up_sections() == set()  # another check: down until it passes
        (run,) = health.due_checks(2.0)
        assert (run.user, run.env) == (changed.user, changed.check_env)
        health.check_result("s", run.token, True)
        assert health.up_sections() == {"s"}
