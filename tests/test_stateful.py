"""Any order of events ends with exactly the right nodes in a real ZooKeeper.

A hypothesis state machine drives the listener's core (health + registry, the
registry talking to a real ZooKeeper through a proxy it can cut) with random
sequences of process states, check results (current and stale), ticks,
connection losses, nodes deleted by hand and config reloads.  After every
step the znodes in ZooKeeper must settle to what the health rules give (a
section is registered while every process it is bound to is RUNNING and its
check, if it has one, has risen), computed here from a model that knows nothing
of the implementation.

Checks are the one part not run for real: the test delivers their results
itself, so it can choose them (the check runner has its own end-to-end tests).
The event loop is not run either: the test is the loop, calling the controller's
input handlers and then its pump, exactly as one pass of the loop would.

What it does not cover, by construction: anything that happens *at the same
time*.  Events arrive one at a time on the test's thread and each settles
before the next; the clock is a fake one the test advances; there is no
supervisord, no check process, no pidfd, no signal, no reload read off the
loop and no session file.  So it cannot see a race between the registry's
worker and kazoo's threads and the loop, a check result or XML-RPC snapshot
overtaken by a newer event, a reload landing while ZooKeeper reconnects, or a
listener crash mid-write.  ``tests/test_soak.py`` covers those: real
supervisord, real check processes and several fault actors at once, with the
same rules checked at quiet points.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from kazoo.exceptions import NoNodeError

from zkwatcher_supervisor import listener as listener_module
from zkwatcher_supervisor.checks import CheckOutcome
from zkwatcher_supervisor.config import load_config
from zkwatcher_supervisor.listener import Controller
from zkwatcher_supervisor.loop import EventLoop
from zkwatcher_supervisor.registry import Registry
from zkwatcher_supervisor.testing import FaultProxy, wait_until

STATES = ["STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "UNKNOWN"]
PROCESSES = [("p", "p_00"), ("p", "p_01"), ("q", "q")]
PROGRAMS = {"proc": "p", "both": "q"}  # section -> group it follows
COMMANDS = {"both", "cmd", "extra"}  # sections with a check


class RecordedChecks:
    """Stands in for the check runner: keeps the runs the controller asks for."""

    def __init__(self):
        self.submitted = []

    def submit(self, runs):
        self.submitted.extend(runs)

    def busy_sections(self):
        return set()

    def cancel(self, section):
        pass  # the model marks abandoned runs itself

    def stop(self, timeout=0):
        pass


def config_text(base, hosts, version, extra):
    text = f"""
        [zkwatcher]
        hosts = {hosts}
        session_timeout = 10

        [proc]
        program = p:*
        service_port = 1
        service_hostname = h
        zookeeper_path = {base}/proc

        [both]
        program = q
        cmd = check-both
        refresh = 1
        service_port = 2
        service_hostname = h
        zookeeper_path = {base}/both

        [cmd]
        cmd = check-cmd
        refresh = 1
        service_port = 3
        service_hostname = h
        zookeeper_path = {base}/cmd
        zookeeper_data = v={version}
        """
    if extra:
        text += f"""
        [extra]
        cmd = check-extra
        refresh = 1
        service_port = 4
        service_hostname = h
        zookeeper_path = {base}/extra
        """
    return textwrap.dedent(text)


def make_machine(zookeeper, zk, tmp_path):
    class ListenerMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.base = f"/stateful-{uuid.uuid4().hex[:10]}"
            self.proxy = FaultProxy(zookeeper.port)
            self.now = 0.0
            self.version, self.extra = 1, False
            self.config_path = tmp_path / f"{uuid.uuid4().hex}.cfg"
            config = self.load()
            self.loop = EventLoop(clock=lambda: self.now)
            self.controller = Controller(config, Registry(config.zookeeper), self.loop)
            self.crashes = []
            self.controller.registry.on_fatal = self.crashes.append
            self.checks = RecordedChecks()
            self.controller.checks = self.checks
            self.controller.start()
            self.controller.pump()
            # The model.
            self.states: dict[tuple[str, str], str] = {}
            self.check_up: dict[str, bool] = {}
            self.outstanding: dict[str, list] = {}  # section -> [[run, valid]]
            self.collect_runs()

        def load(self):
            self.config_path.write_text(
                config_text(self.base, self.proxy.hosts, self.version, self.extra))
            return load_config(str(self.config_path))

        def sections(self):
            return ["proc", "both", "cmd"] + (["extra"] if self.extra else [])

        def process_part(self, section):
            group = PROGRAMS.get(section)
            if group is None:
                return True
            matched = [s for (g, _), s in self.states.items() if g == group]
            return bool(matched) and all(s == "RUNNING" for s in matched)

        def expected(self):
            return {
                section for section in self.sections()
                if self.process_part(section)
                and (section not in COMMANDS or self.check_up.get(section) is True)
            }

        def reset_check(self, section):
            self.check_up.pop(section, None)
            for entry in self.outstanding.get(section, []):
                entry[1] = False

        def collect_runs(self):
            self.controller.pump()  # the end of a loop pass
            for run in self.checks.submitted:
                self.outstanding.setdefault(run.section, []).append([run, True])
            self.checks.submitted.clear()

        # Half the time RUNNING, so sections come up often enough to go down again.
        @rule(process=st.sampled_from(PROCESSES),
              state=st.one_of(st.just("RUNNING"), st.sampled_from(STATES)))
        def process_state(self, process, state):
            group, name = process
            before = {s: self.process_part(s) for s in self.sections()}
            self.states[process] = state
            for section in self.sections():
                if before[section] != self.process_part(section):
                    self.reset_check(section)
            self.controller.handle_event({"eventname": f"PROCESS_STATE_{state}"},
                                         f"processname:{name} groupname:{group} from_state:X")
            self.collect_runs()

        @precondition(lambda self: any(self.outstanding.values()))
        @rule(data=st.data(), passed=st.booleans(), oldest=st.booleans())
        def check_result(self, data, passed, oldest):
            section = data.draw(st.sampled_from(
                sorted(s for s, runs in self.outstanding.items() if runs)))
            run, valid = self.outstanding[section].pop(0 if oldest else -1)
            if valid and section in self.sections():
                self.check_up[section] = passed
            self.controller._on_check_result(
                run, CheckOutcome(passed, 0 if passed else 1, False, 0.01, ""))
            self.collect_runs()

        @rule()
        def tick(self):
            self.now += 1.0
            self.controller.handle_event({"eventname": "TICK_5"}, "when:0")
            self.collect_runs()

        @rule()
        def connection_loss(self):
            self.proxy.cut()
            wait_until(lambda: not self.controller.registry.connected, 5, what="disconnect")
            self.proxy.restore()

        @rule(data=st.data())
        def delete_by_hand(self, data):
            found = self.registered()
            if found:
                section = data.draw(st.sampled_from(sorted(found)))
                zk.delete(found[section][0])

        @rule(version=st.sampled_from([1, 2]), extra=st.booleans())
        def reload(self, version, extra):
            if extra != self.extra:
                self.reset_check("extra")
            self.version, self.extra = version, extra
            self.controller.reload(self.load())
            self.collect_runs()

        def registered(self):
            found = {}
            for section in ["proc", "both", "cmd", "extra"]:
                path = f"{self.base}/{section}"
                try:
                    for child in zk.get_children(path):
                        node = f"{path}/{child}"
                        found[section] = (node, zk.get(node)[0])
                except NoNodeError:
                    pass
            return found

        @invariant()
        def zookeeper_matches_the_rules(self):
            assert not self.crashes, self.crashes
            expected = self.expected()

            def settled():
                found = self.registered()
                if set(found) != expected:
                    return False
                return "cmd" not in found or json.loads(found["cmd"][1])["v"] == str(self.version)

            try:
                wait_until(settled, 5, interval=0.005, what="ZooKeeper matching the model")
            except TimeoutError:
                raise AssertionError(
                    f"ZooKeeper has {sorted(self.registered())}, rules say {sorted(expected)}"
                ) from None

        def teardown(self):
            self.controller.stop()
            self.loop.close()
            self.proxy.close()

    return ListenerMachine


def test_nodes_follow_the_rules_under_any_event_order(zookeeper, zk, tmp_path):
    machine = make_machine(zookeeper, zk, tmp_path)
    run_state_machine_as_test(
        machine, settings=settings(max_examples=60, stateful_step_count=30, deadline=None))


def test_the_registry_hears_settled_only_after_the_update_with_the_last_verdict(tmp_path):
    """After a restart the registry keeps the nodes it inherited until told the
    wanted set is complete.  Told in the pass that brought the last verdict but
    before that verdict's update, it would delete a node that just proved healthy."""
    path = tmp_path / "settle.cfg"
    path.write_text("[zkwatcher]\nhosts = 127.0.0.1:1\n[web]\ncmd = true\nservice_port = 80\n"
                    "service_hostname = h\nzookeeper_path = /settle\n")
    config = load_config(str(path))
    registry = Registry(config.zookeeper)
    calls = []
    update, settled = registry.update, registry.settled
    registry.update = lambda changes: (calls.append(("update", sorted(changes))),
                                       update(changes))
    registry.settled = lambda parents=(): (calls.append(("settled",)), settled(parents))
    controller = Controller(config, registry, EventLoop())
    controller.checks = checks = RecordedChecks()
    controller.start()
    try:
        controller.pump()
        (run,) = checks.submitted
        # The verdict and the settle check in one loop pass, as a timer fires them.
        controller._on_check_result(run, CheckOutcome(True, 0, False, 0.0, ""))
        controller._check_settled()
        assert ("settled",) not in calls
        controller.pump()
        assert calls == [("update", ["/settle/h:80"]), ("settled",)]
    finally:
        registry.stop(0.5)


def test_sigusr2_looks_at_the_state_directory_off_the_loop(tmp_path):
    """The hand-over's look at the state directory is a stat, which an NFS mount
    can hang: it runs on a thread of its own, and the answer (here: refused, no
    session file) comes back to the loop, which keeps running meanwhile."""
    looked_from = []

    def look():
        looked_from.append(threading.current_thread())
        return None

    controller = hand_over_controller(tmp_path, look)
    try:
        controller.request_hand_over()
        controller.request_hand_over()  # a second SIGUSR2 while the first is looked into
        deadline = time.monotonic() + 5
        while controller.handoff_refused is None:
            assert time.monotonic() < deadline, "no answer to SIGUSR2"
            controller.loop.run_once(timeout=0.05)
        assert len(looked_from) == 1
        assert looked_from[0] is not threading.main_thread()
        assert controller.handoff_refused["why"] == "no session file"
        assert not controller.handing_over
    finally:
        stop_hand_over_controller(controller)


def hand_over_controller(tmp_path, look):
    """A Controller whose registry looks at the state directory with ``look``
    (its status file under ``tmp_path``)."""
    path = tmp_path / "handoff.cfg"
    path.write_text("[zkwatcher]\nhosts = 127.0.0.1:1\n[web]\ncmd = true\nservice_port = 80\n"
                    "service_hostname = h\nzookeeper_path = /handoff\n")
    config = load_config(str(path))
    registry = Registry(config.zookeeper)
    registry.state_directory_problem = look
    loop = EventLoop()
    controller = Controller(config, registry, loop, status_path=str(tmp_path / "status.json"))
    controller.checks = RecordedChecks()
    controller.start()
    return controller


def stop_hand_over_controller(controller):
    controller.status.stop()
    controller.registry.stop(0.5)


def run_until_refused_anew(controller, before, timeout=5.0):
    deadline = time.monotonic() + timeout
    while controller.handoff_refused is before:
        assert time.monotonic() < deadline, "no answer to SIGUSR2"
        controller.loop.run_once(timeout=0.05)
    return controller.handoff_refused["why"]


def test_a_hung_state_directory_look_is_a_refusal_and_its_late_answer_is_dropped(
        tmp_path, monkeypatch):
    """An NFS state directory that hangs the stat: SIGUSR2 is refused (logged and in
    the status) after HAND_OVER_LOOK_TIMEOUT; while that look hangs, the next SIGUSR2
    is refused at once (no second thread stuck); its late answer counts for
    nothing, and the SIGUSR2 after it looks again."""
    monkeypatch.setattr(listener_module, "HAND_OVER_LOOK_TIMEOUT", 0.3)
    release, answered = threading.Event(), threading.Event()
    answers = iter(["first look, answered late", None])
    looks = []

    def look():
        answer = next(answers)
        looks.append(answer)
        if answer is not None:
            release.wait(10)
            answered.set()
        return answer

    controller = hand_over_controller(tmp_path, look)
    try:
        started = time.monotonic()
        controller.request_hand_over()
        assert run_until_refused_anew(controller, None) == (
            "the state directory did not answer within 0.3s")
        assert 0.3 <= time.monotonic() - started < 2
        first = controller.handoff_refused
        controller.request_hand_over()  # the first look still hangs
        assert run_until_refused_anew(controller, first, 0.5) == (
            "the state directory has still not answered the look of an earlier SIGUSR2")
        assert len(looks) == 1
        refused = controller.handoff_refused
        release.set()  # the hung look answers now: too late to count
        answered.wait(5)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            controller.loop.run_once(timeout=0.05)
        assert controller.handoff_refused is refused
        controller.request_hand_over()  # looks again: no session file this time
        assert run_until_refused_anew(controller, refused) == "no session file"
        assert len(looks) == 2
        assert not controller.handing_over
    finally:
        release.set()
        stop_hand_over_controller(controller)


def test_an_error_in_the_state_directory_look_ends_the_listener(tmp_path):
    """What the directory can answer (missing, not private) is a refusal; any other
    error there is a bug of ours and leaves the loop (the listener exits 1)."""
    def look():
        raise RuntimeError("a bug")

    controller = hand_over_controller(tmp_path, look)
    try:
        controller.request_hand_over()
        with pytest.raises(RuntimeError, match="a bug"):
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                controller.loop.run_once(timeout=0.05)
        assert controller.handoff_refused is None
    finally:
        stop_hand_over_controller(controller)
