"""The ``status`` lines an operator reads, from a status file as the listener writes it."""

from __future__ import annotations

import json
import os

from zkwatcher_supervisor.config import load_config
from zkwatcher_supervisor.status import status_report


def test_check_counters_are_shown_beside_their_thresholds(tmp_path):
    config_path = tmp_path / "config.cfg"
    status_path = tmp_path / "status.json"
    config_path.write_text(f"[zkwatcher]\nstatus_file = {status_path}\n"
                           "[web]\ncmd = true\nrise = 2\nfall = 3\nservice_port = 80\n"
                           "service_hostname = h\nzookeeper_path = /s\n")
    config = load_config(str(config_path))
    now = 1_000_000.0
    status_path.write_text(json.dumps({
        "pid": os.getpid(), "updated": now, "zookeeper": {"connected": True},
        "sections": {"web": {
            "path": "/s/h:80", "healthy": True, "registered": True, "processes": {},
            "check": {"last_result": True, "last_run": now - 3, "duration": 0.01,
                      "detail": None, "passes": 7, "failures": 0, "rise": 2, "fall": 3},
        }},
    }))
    lines, ok = status_report(config, lambda paths: dict.fromkeys(paths, True), now=now)
    assert ok
    assert lines[1] == ("ok   [web] /s/h:80 registered, healthy; check pass 3s ago, "
                        "passes 7 (rise 2), failures 0 (fall 3)")
