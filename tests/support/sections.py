"""Config text: service sections and the eventlistener section that runs us."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

LISTENER = f"{sys.executable} -m zkwatcher_supervisor"
# A password-protected supervisord's (LocalSupervisord(username=, password=)).
SUPERVISORD_USERNAME, SUPERVISORD_PASSWORD = "admin", "s3cret"


def section(base_path: str, name: str, port: int | str, *, cmd: str | None = None,
            program: str | None = None, path: str | None = None, refresh: int | None = 1,
            timeout: float | None = 2, hostname: str = "host1", extra: str = "",
            **keys: object) -> str:
    """One service section, registered as ``hostname:port`` under ``path`` (by default
    ``base_path/name``).  With a ``cmd`` come ``refresh`` and ``timeout`` lines (None
    leaves one out, for the listener's default); ``keys`` are more ``key = value``
    lines, ``extra`` more lines as written."""
    lines = [f"[{name}]"]
    if program:
        lines.append(f"program = {program}")
    if cmd:
        lines.append(f"cmd = {cmd}")
        lines += [f"{key} = {value}" for key, value in (("refresh", refresh),
                                                       ("timeout", timeout))
                  if value is not None]
    lines += [f"{key} = {value}" for key, value in keys.items() if value is not None]
    lines += [line.strip() for line in extra.strip().splitlines()]
    lines += [f"service_port = {port}", f"service_hostname = {hostname}",
              f"zookeeper_path = {path or f'{base_path}/{name}'}"]
    return "\n" + "\n".join(lines) + "\n\n"


def listener_section(config: Path, events: str = "PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION",
                     extra: str = "") -> str:
    return textwrap.dedent(f"""
        [eventlistener:zkwatcher]
        command = {LISTENER} -c {config}
        events = {events}
        buffer_size = 1024
        startsecs = 0
        stopwaitsecs = 5
        stderr_logfile = {config.parent}/zkwatcher.log
        """) + extra


def credentials_environment(username: str = SUPERVISORD_USERNAME,
                            password: str = SUPERVISORD_PASSWORD) -> str:
    """The eventlistener line handing the listener supervisord's credentials."""
    return (f'environment = SUPERVISOR_USERNAME="{username}",'
            f'SUPERVISOR_PASSWORD="{password}"\n')


def web_program(port: int) -> str:
    """A supervisord program serving HTTP on 127.0.0.1:``port``."""
    return textwrap.dedent(f"""
        [program:web]
        command = {sys.executable} -m http.server {port} --bind 127.0.0.1
        startsecs = 1
        stopsignal = KILL
        """)


def programs(*names: str) -> str:
    """supervisord programs that run until stopped, one per name."""
    return "".join(textwrap.dedent(f"""
        [program:{name}]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) for name in names)
