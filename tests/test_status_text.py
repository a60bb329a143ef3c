"""The ``status`` lines an operator reads, from a status file as the listener writes it."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zkwatcher_supervisor.config import load_config
from zkwatcher_supervisor.loop import EventLoop
from zkwatcher_supervisor.status import StatusPublisher, read_status_file, status_report

NOW = 1_000_000.0


def web_listener(tmp_path, web: dict, keys: str = ""):
    """A config with one section [web] and a live listener's status file saying ``web``."""
    config_path = tmp_path / "config.cfg"
    status_path = tmp_path / "status.json"
    config_path.write_text(f"[zkwatcher]\nstatus_file = {status_path}\n"
                           f"[web]\ncmd = true\n{keys}service_port = 80\n"
                           "service_hostname = h\nzookeeper_path = /s\n")
    status_path.write_text(json.dumps({
        "pid": os.getpid(), "updated": NOW, "zookeeper": {"connected": True},
        "sections": {"web": web}}))
    return load_config(str(config_path))


def test_check_counters_are_shown_beside_their_thresholds(tmp_path):
    now = NOW
    config = web_listener(tmp_path, {
        "path": "/s/h:80", "healthy": True, "registered": True, "processes": {},
        "check": {"last_result": True, "last_run": now - 3, "duration": 0.01,
                  "detail": None, "passes": 7, "failures": 0, "rise": 2, "fall": 3},
    }, keys="rise = 2\nfall = 3\n")
    lines, ok = status_report(config, lambda paths: dict.fromkeys(paths, True), now=now)
    assert ok
    assert lines[1] == ("ok   [web] /s/h:80 registered, healthy; check pass 3s ago, "
                        "passes 7 (rise 2), failures 0 (fall 3)")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.dictionaries(st.text(), json_values, max_size=5),
       sections=st.none() | st.dictionaries(st.text(), json_values, max_size=5))
def test_the_status_file_is_the_json_of_the_snapshot(tmp_path, state, sections):
    """Written a section at a time, the file is still exactly ``json.dumps`` of
    the snapshot (keys sorted), and reads back as the same data."""
    if sections is not None:
        state = {**state, "sections": sections}
    path = tmp_path / "status.json"
    loop = EventLoop()
    try:
        StatusPublisher(loop, str(path), dict)._write(state)
    finally:
        loop.close()
    text = path.read_text()
    assert text == json.dumps(state, sort_keys=True, separators=(",", ":"))
    assert json.loads(text) == state
    # Arbitrary content is not a listener's status: refused, never a traceback.
    assert read_status_file(str(path)) in (None, state)


def test_zookeeper_unreachable_is_not_fine(tmp_path):
    """Nothing known about the nodes: an unhealthy section must not pass for one
    correctly without its node."""
    config = web_listener(tmp_path, {"path": "/s/h:80", "healthy": False, "registered": False,
                                     "processes": {}, "check": None})
    lines, ok = status_report(config, lambda paths: None, now=NOW)
    assert not ok
    assert lines[1] == "BAD  [web] /s/h:80 registration unknown, unhealthy"
