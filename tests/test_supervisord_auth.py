"""A supervisord whose XML-RPC server wants a username and password.

The listener reads process states over XML-RPC at start.  supervisor.childutils
takes the credentials from SUPERVISOR_USERNAME / SUPERVISOR_PASSWORD, which the
README tells operators to set with ``environment=`` in the eventlistener section.
"""

from __future__ import annotations

import textwrap

import pytest
from support.sections import (
    LISTENER,
    SUPERVISORD_PASSWORD,
    SUPERVISORD_USERNAME,
    credentials_environment,
    programs,
)
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e


def test_password_protected_supervisord_answers_the_listener_given_credentials(
        write_config, supervisord, zk, base_path, tmp_path):
    sections = ""
    configs = {}
    for name, environment in (("given", credentials_environment()), ("missing", "")):
        configs[name] = write_config(f"""
            [web]
            program = web
            service_port = 80
            service_hostname = {name}
            zookeeper_path = {base_path}/web
            """, name=f"{name}.cfg")
        sections += textwrap.dedent(f"""
            [eventlistener:{name}]
            command = {LISTENER} -c {configs[name]}
            events = PROCESS_STATE,TICK_5
            buffer_size = 1024
            startsecs = 0
            stderr_logfile = {tmp_path}/{name}.log
            """) + environment
    supervisord(programs("web") + sections, username=SUPERVISORD_USERNAME,
                password=SUPERVISORD_PASSWORD)
    wait_until(lambda: node_exists(zk, f"{base_path}/web/given:80"), 20,
               what="registration by the listener with credentials")
    wait_until(lambda: "cannot read process states" in
               (tmp_path / "missing.log").read_text(), 10, what="warning without them")
    given = (tmp_path / "given.log").read_text()
    assert "cannot read process states" not in given, given
    assert "Unauthorized" in (tmp_path / "missing.log").read_text()
