"""The saved session is a credential and decides what we register: only a
file our user alone can write is ever trusted."""

from __future__ import annotations

import json
import os
import stat

import pytest

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
    with pytest.raises(OSError, match="not a private directory"):
        session_file.save(path, SESSION)
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


def test_the_location_follows_the_path_as_given_not_a_symlink_target(tmp_path):
    """A release symlink swapped to another file with the same content is the same
    listener: its session, drains and status stay where they were."""
    (tmp_path / "v1.cfg").write_text("x")
    (tmp_path / "v2.cfg").write_text("x")
    link = tmp_path / "config.cfg"
    link.symlink_to(tmp_path / "v1.cfg")
    before = session_file.default_path(str(link))
    link.unlink()
    link.symlink_to(tmp_path / "v2.cfg")
    assert session_file.default_path(str(link)) == before
    assert session_file.default_path(os.path.relpath(link)) == before


def test_the_store_writes_in_the_background_and_flushes(tmp_path):
    path = str(tmp_path / "state" / "session.json")
    store = session_file.SessionStore(path)
    assert store.problem is None and store.load() is None
    store.put(SESSION)
    assert store.flush(5) is None
    assert session_file.load(path) == SESSION
    store.discard()
    assert not os.path.exists(path)


def test_a_store_that_cannot_write_says_why(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    path = str(directory / "session.json")
    store = session_file.SessionStore(path)
    os.chmod(directory, 0o775)  # no longer private: every write is refused
    store.put(SESSION)
    assert "not a private directory" in store.flush(5)
    assert "not a private directory" in store.problem


def test_a_session_an_earlier_version_saved_is_taken_over_and_its_file_removed(tmp_path):
    old = str(tmp_path / "old" / "session-0123456789ab.json")
    session_file.save(old, SESSION)
    store = session_file.SessionStore(str(tmp_path / "new" / "session.json"), legacy=[old])
    assert store.load() == SESSION
    store.put(SESSION)
    assert store.flush(5) is None
    assert not os.path.exists(old)


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


def test_a_session_an_earlier_listener_still_holds_is_not_taken(tmp_path):
    old = str(tmp_path / "old" / "session-0123456789ab.json")
    session_file.save(old, SESSION)
    holder = session_file.claim(old)  # that listener is still running
    assert holder is not None
    import subprocess
    import sys

    other = subprocess.run(
        [sys.executable, "-c", "import sys; from zkwatcher_supervisor import session_file; "
         f"store = session_file.SessionStore({str(tmp_path / 'new' / 'session.json')!r}, "
         f"legacy=[{old!r}]); sys.exit(0 if store.load() is None else 1)"],
        capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert "still holds" in other.stderr


def test_a_negative_session_id_is_a_session_id(tmp_path):
    """Servers whose myid is 128 or more hand out ids with the top bit set, which
    kazoo reads as negative numbers."""
    path = str(tmp_path / "state" / "session.json")
    negative = SavedSession(-0x7ef0000000000001, b"p" * 16, {})
    session_file.save(path, negative)
    assert session_file.load(path) == negative


def test_a_session_file_says_whether_its_writer_names_sections_in_a_drain_file(tmp_path):
    """An earlier version's file has no drain_sections: its listener wrote a drain
    file only for a drain, which start_drained has to know."""
    path = str(tmp_path / "s.json")
    session_file.save(path, SESSION)
    assert session_file.load(path).drain_sections is True
    with open(path) as file:
        saved = json.load(file)
    del saved["drain_sections"]
    with open(path, "w") as file:
        json.dump(saved, file)
    assert session_file.load(path) == SavedSession(
        SESSION.session_id, SESSION.password, SESSION.nodes, drain_sections=False)
