"""The saved session is a credential and decides what we register: only a
file our user alone can write is ever trusted."""

from __future__ import annotations

import os
import stat

from zkwatcher_supervisor import session_file
from zkwatcher_supervisor.session_file import SavedSession

SESSION = SavedSession(0x1234, b"p" * 16, {"/a/h:1": "/a/h:1",
                                           "/b/member_#h:2": "/b/member_0000000007"})


def test_round_trip_with_private_modes(tmp_path):
    path = str(tmp_path / "state" / "session.json")
    session_file.save(path, SESSION)
    assert session_file.load(path) == SESSION
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o755  # others read, never write


def test_a_file_others_may_write_is_refused(tmp_path, caplog):
    path = str(tmp_path / "state" / "session.json")
    session_file.save(path, SESSION)
    os.chmod(path, 0o622)
    assert session_file.load(path) is None
    assert "writable by others" in caplog.text


def test_a_directory_others_may_write_is_refused(tmp_path, caplog):
    directory = tmp_path / "shared"
    directory.mkdir(mode=0o777)
    os.chmod(directory, 0o777)
    path = str(directory / "session.json")
    session_file.save(path, SESSION)  # refused, with a warning
    assert not os.path.exists(path)
    (directory / "session.json").write_text('{"session_id": 1, "password": "cA=="}')
    os.chmod(directory / "session.json", 0o600)
    assert session_file.load(path) is None


def test_a_symlink_is_not_followed(tmp_path):
    real = str(tmp_path / "state" / "real.json")
    session_file.save(real, SESSION)
    link = tmp_path / "state" / "session.json"
    link.symlink_to(real)
    assert session_file.load(str(link)) is None


def test_garbage_is_ignored_not_fatal(tmp_path):
    path = tmp_path / "state" / "session.json"
    session_file.save(str(path), SESSION)
    path.write_text("{not json")
    assert session_file.load(str(path)) is None


def test_default_location_is_not_a_world_writable_directory(tmp_path):
    path = session_file.default_path(str(tmp_path / "zk.cfg"))
    assert not path.startswith("/tmp/")
    assert path != session_file.default_path(str(tmp_path / "other.cfg"))


def test_only_one_process_claims_a_session(tmp_path):
    import subprocess
    import sys

    path = str(tmp_path / "state" / "session.json")
    assert session_file.claim(path) is not None
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from zkwatcher_supervisor import session_file; "
         f"sys.exit(0 if session_file.claim({path!r}) is None else 1)"],
        capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert "another listener is running with this config" in other.stderr
