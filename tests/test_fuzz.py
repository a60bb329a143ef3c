"""Fuzzing the parsers that face input from outside the process.

Anyone who may call supervisord's XML-RPC controls REMOTE_COMMUNICATION
payloads; supervisord's own stream, the files we read back and the config are
outside input too.  Whatever arrives, the parser gives a usable value or says
it cannot use it — no other exception escapes (one would end the listener and
deregister the host).  Each test prints how many examples it ran.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zkwatcher_supervisor import drain, session_file
from zkwatcher_supervisor.config import ConfigError, load_config
from zkwatcher_supervisor.listener import Controller
from zkwatcher_supervisor.loop import EventLoop
from zkwatcher_supervisor.protocol import EventParser
from zkwatcher_supervisor.registry import Registry
from zkwatcher_supervisor.status import read_status_file

EXAMPLES = 500
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_scalars = (st.none() | st.booleans() | st.integers() | st.floats()
                | st.text(max_size=30) | st.integers(min_value=10**300, max_value=10**500))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=10), children, max_size=4),
                           max_leaves=25)
# Requests that look like ours, with every field possibly wrong.
request_fields = st.fixed_dictionaries({}, optional={
    "config": st.text(max_size=20) | json_values,
    "id": st.text(max_size=70) | json_values,
    "action": st.sampled_from(["drain", "undrain", "stop"]) | json_values,
    "sections": st.lists(st.text(max_size=20) | json_values, max_size=5) | json_values,
    "reason": st.text() | json_values,
    "by": st.text() | json_values,
    "duration": st.floats() | st.integers() | json_values,
    "until": json_values,
})


def deep(text: str) -> str:
    return text * 100000


hostile_texts = (st.text() | st.binary().map(lambda b: b.decode("latin-1"))
                 | st.sampled_from([deep("["), deep("{\"a\":"), "1" + "0" * 400,
                                    "[" * 500 + "]" * 500, "\ud800", "NaN", "-Infinity"]))


class Counted:
    """Counts the examples a test ran, to print beside its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    def report(self) -> None:
        print(f"{self.name}: {self.count} examples, 0 exceptions escaped")


@pytest.fixture
def controller(tmp_path):
    """A listener's controller, not started: events in, no ZooKeeper traffic."""
    path = tmp_path / "fuzz.cfg"
    path.write_text("[web]\nprogram = web\nservice_port = 1\nservice_hostname = h\n"
                    "zookeeper_path = /fuzz\n")
    config = load_config(str(path))
    loop = EventLoop()
    yield Controller(config, Registry(config.zookeeper), loop,
                     status_path=str(tmp_path / "status.json"))
    loop.close()


def test_remote_communication_payloads(controller):
    counted = Counted("REMOTE_COMMUNICATION payloads")
    config = controller.config_key

    @FUZZ
    @given(data=hostile_texts | json_values.map(json.dumps)
           | request_fields.map(lambda fields: json.dumps({"config": config, **fields})),
           typed=st.booleans())
    def run(data, typed):
        counted()
        payload = f"type:{drain.EVENT_TYPE}\n{data}" if typed else data
        controller.handle_event({"eventname": "REMOTE_COMMUNICATION"}, payload)

    run()
    counted.report()
    # The two payloads that ended the listener before, and one that must work.
    for data in ("[" * 100000, json.dumps({"config": config, "id": "a", "action": "drain",
                                           "sections": ["web"], "duration": 10**400})):
        controller.handle_event({"eventname": "REMOTE_COMMUNICATION"},
                             f"type:{drain.EVENT_TYPE}\n{data}")
    request = drain.request(controller.config.filename, "drain", ["web"], "a\nfake line")
    controller.handle_event({"eventname": "REMOTE_COMMUNICATION"},
                         f"type:{drain.EVENT_TYPE}\n{json.dumps(request)}")
    assert controller.drains.entry("web").reason == "a\\nfake line"  # escaped, one line


def test_parse_event_refuses_with_a_reason():
    counted = Counted("drain.parse_event")

    @FUZZ
    @given(data=hostile_texts | json_values.map(json.dumps) | request_fields.map(json.dumps))
    def run(data):
        counted()
        try:
            request = drain.parse_event(f"type:{drain.EVENT_TYPE}\n{data}")
        except ValueError as exc:  # Unusable and UnusableRequest: a reason to log
            assert str(exc)
        else:
            assert isinstance(request, drain.DrainRequest)
            assert all(name.isprintable() for name in request.sections)
            assert request.reason.isprintable() and request.by.isprintable()

    run()
    counted.report()


def test_process_state_events(controller):
    counted = Counted("PROCESS_STATE payloads")

    @FUZZ
    @given(event=st.sampled_from(["PROCESS_STATE_RUNNING", "PROCESS_STATE_EXITED",
                                  "PROCESS_STATE_"]) | st.text(max_size=30),
           payload=st.text() | st.builds(
               lambda fields: " ".join(f"{k}:{v}" for k, v in fields.items()),
               st.dictionaries(st.sampled_from(["processname", "groupname", "from_state",
                                                "pid", "expected"]),
                               st.text(max_size=12) | st.integers().map(str))))
    def run(event, payload):
        counted()
        controller.handle_event({"eventname": event}, payload)

    run()
    counted.report()


def test_the_protocol_stream():
    counted = Counted("supervisord byte stream")

    @FUZZ
    @given(chunks=st.lists(st.binary(max_size=300) | st.sampled_from(
        [b"ver:3.0 eventname:TICK_5 len:5\n", b"len:-1\n", b"len:99999999999\n",
         b"len:\xff\n", b"\n", b"len:3\nabc"]), max_size=20))
    def run(chunks):
        counted()
        parser = EventParser()
        for chunk in chunks:
            for event in parser.feed(chunk):
                assert isinstance(event.headers, dict) and isinstance(event.payload, str)

    run()
    counted.report()


def private_file(tmp_path, content: bytes) -> str:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o755, exist_ok=True)
    path = directory / "file.json"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    return str(path)


# Drain files as this version writes them, with every field possibly wrong.
drain_files = st.dictionaries(
    st.text(max_size=8), st.fixed_dictionaries({}, optional={
        key: json_values for key in ("reason", "by", "since", "until")}), max_size=3).flatmap(
    lambda drains: st.fixed_dictionaries({"": st.fixed_dictionaries(
        {"since": st.just(0) | json_values},
        optional={"sections": json_values | st.dictionaries(
            st.text(max_size=8), st.text(max_size=8) | json_values, max_size=3)})}).map(
        lambda entry: {**drains, **entry}))
file_contents = (st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())
                 | drain_files.map(lambda v: json.dumps(v).encode())
                 | st.sampled_from([b"[" * 100000, b'{"session_id": 1e400, "password": "x"}',
                                    b'{"session_id": ' + b"9" * 400 + b', "password": ""}',
                                    b'{"web": {"since": 1e999, "until": "x"}}',
                                    b'{"": {"since": 0, "sections": {"web": 1}}}',
                                    b'{"": {"since": 0, "sections": [["web", "/x"]]}}',
                                    b'{"": {"since": 0, "sections": {"web": "/w"}}, '
                                    b'"web": {"since": 1}}',
                                    b'{"pid": 1, "updated": 1, "sections": {"a": 1}}']))


def test_state_files_read_back(tmp_path, caplog):
    counted = Counted("session, drain and status files")

    @FUZZ
    @given(content=file_contents)
    def run(content):
        counted()
        path = private_file(tmp_path, content)
        saved = session_file.load(path)
        assert saved is None or isinstance(saved, session_file.SavedSession)
        drains = drain.load(path)
        assert all(isinstance(entry, drain.Drain) for entry in drains.drains.values())
        assert drains.sections is None or all(
            isinstance(name, str) and isinstance(node, str)
            for name, node in drains.sections.items())
        state = read_status_file(path)
        assert state is None or isinstance(state["pid"], int)

    run()
    counted.report()


def test_config_files(tmp_path):
    counted = Counted("config files")
    path = tmp_path / "fuzz.cfg"
    lines = st.sampled_from(["[zkwatcher]", "[auth]", "[web]", "[DEFAULT]", "hosts = a:1",
                             "service_port = 80", "zookeeper_path = /x", "cmd = true",
                             "program = web", "refresh = -1", "zookeeper_data = {\"a\": 1}",
                             "payload_format = serverset", "user = u", "%(x)s", "[", "= x",
                             "  indented", "timeout = 1e400", "rise = 99999999999999999999"])

    @FUZZ
    @given(text=st.lists(lines | st.text(max_size=40), max_size=15).map("\n".join)
           | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
    def run(text):
        counted()
        path.write_text(text, errors="surrogatepass")
        try:
            load_config(str(path))
        except ConfigError as exc:
            assert str(exc).startswith(str(path))

    run()
    counted.report()


def test_status_reports_from_odd_status_files(tmp_path):
    """``status`` reads a file others may have put in its way: whatever parses as a
    status file is reported without a traceback."""
    from zkwatcher_supervisor.status import status_report

    counted = Counted("status reports")
    section = st.fixed_dictionaries({"path": st.text(max_size=10), "healthy": st.booleans()},
                                    optional={"registered": json_values,
                                              "processes": json_values,
                                              "check": json_values | st.fixed_dictionaries(
                                                  {}, optional={key: json_values for key in (
                                                      "last_result", "last_run", "passes",
                                                      "failures", "rise", "fall", "detail",
                                                      "due_by")}),
                                              "drained": json_values | st.fixed_dictionaries(
                                                  {}, optional={key: json_values for key in (
                                                      "by", "reason", "since", "until")})})
    path = tmp_path / "status.json"

    @FUZZ
    @given(sections=st.dictionaries(st.text(max_size=8), section, max_size=3),
           updated=st.floats(0, 2e9) | json_values)
    def run(sections, updated):
        counted()
        path.write_text(json.dumps({"pid": os.getpid(), "updated": updated,
                                    "zookeeper": {"connected": True}, "sections": sections}))
        state = read_status_file(str(path))
        status_report(None, lambda paths: dict.fromkeys(paths, True),
                      located=(str(path), state))

    run()
    counted.report()


def test_drain_reads_any_answer_the_status_file_check_lets_through(tmp_path):
    """A listener's answers to drain requests come back through the status file:
    an answer the file's check accepts is one drain and handoff can read."""
    from zkwatcher_supervisor.drain import answer_outcome

    counted = Counted("answers to drain requests")
    answer = json_values | st.fixed_dictionaries({}, optional={
        "error": json_values, "applied": json_values | st.lists(st.text(max_size=4)),
        "sections": json_values | st.lists(st.text(max_size=4)),
        "refused": json_values | st.dictionaries(st.text(max_size=4), json_values),
        "refused_more": json_values, "accepted": json_values})
    path = tmp_path / "status.json"

    @FUZZ
    @given(answers=st.dictionaries(st.text(max_size=4), answer, max_size=3),
           refused=json_values | st.fixed_dictionaries({}, optional={"why": json_values}))
    def run(answers, refused):
        counted()
        path.write_text(json.dumps({"pid": os.getpid(), "updated": 1.0, "sections": {},
                                    "zookeeper": {"connected": True}, "requests": answers,
                                    "handoff_refused": refused}))
        state = read_status_file(str(path))
        if state is None:
            return
        for one in state["requests"].values():
            applied, why = answer_outcome(one, ["a", ""])
            assert all(isinstance(text, str) for text in [*applied, *why, *why.values()])
            # No section is taken as done unless the answer says it was applied.
            assert {"a", ""} <= {*applied, *why} or one.get("refused_more")
            assert isinstance(one.get("error") or "", str)
        if state.get("handoff_refused") is not None:
            assert isinstance(state["handoff_refused"]["why"], str)

    run()
    counted.report()


def test_supervisord_answers_to_drain_stop():
    """drain --stop reads supervisord's XML-RPC answers (another process's): an
    answer of any shape is read into names and states, or refused as Unusable."""
    from zkwatcher_supervisor.drain import process_states, stop_results
    from zkwatcher_supervisor.untrusted import Unusable

    counted = Counted("supervisord answers")
    entry = json_values | st.fixed_dictionaries({}, optional={
        "group": json_values | st.text(max_size=4), "name": json_values | st.text(max_size=4),
        "statename": json_values | st.sampled_from(["RUNNING", "STOPPED"]),
        "status": json_values | st.sampled_from([80, 70, 30]), "description": json_values})

    @FUZZ
    @given(answer=json_values | st.lists(entry, max_size=4))
    def run(answer):
        counted()
        for read in (process_states, stop_results):
            try:
                result = read(answer)
            except Unusable:
                continue
            if read is process_states:
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())
            else:
                assert all(isinstance(name, str) and ":" in name and isinstance(why, str)
                           and (status is None or isinstance(status, int))
                           for name, status, why in result)

    run()
    counted.report()


def asks_for_help_or_version(argv: list[str]) -> bool:
    """-h (alone or among short flags: -vh) or an abbreviation of --help or --version."""
    return any((word.startswith("-") and not word.startswith("--") and "h" in word)
               or (len(word) > 2 and ("--help".startswith(word) or "--version".startswith(word)))
               for word in argv)


def test_command_line_arguments():
    """The command line is outside input too: argparse refuses what it cannot use
    (exit 2), --for and --wait included; nothing else escapes."""
    from zkwatcher_supervisor.cli import build_parser

    counted = Counted("command-line arguments")
    words = st.sampled_from(["drain", "undrain", "status", "--for", "--wait", "--stop", "-c",
                             "nan", "inf", "-1", "1e400", "1000000000000d", "90s", "web"])

    @FUZZ
    @given(argv=st.lists(words | st.text(max_size=12), max_size=8))
    def run(argv):
        counted()
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code == 2 or (exc.code == 0 and asks_for_help_or_version(argv))
            return
        if args.wait is not None:
            assert 0 <= args.wait <= 86400
        if args.duration:
            try:
                assert 0 < drain.parse_duration(args.duration) <= drain.MAX_DRAIN_SECONDS
            except ValueError as exc:
                assert "duration" in str(exc) or "longer than" in str(exc)

    run()
    counted.report()


def test_node_data_read_from_zookeeper():
    """Node data is whatever its writer put there: a peer's payload read by
    ``drain --stop``, a reattached node compared with ours."""
    from zkwatcher_supervisor.payload import announced_endpoints, names_endpoint, same_registration

    counted = Counted("node data")
    # Shaped like an endpoint, so the port's own checks are reached: digits
    # str.isdigit accepts but int refuses ("²"), huge, negative, out of range.
    ports = (st.text(max_size=12) | st.integers() | json_values
             | st.sampled_from(["²", "٣", "0080", "65536", "-1", "9" * 5000]))
    endpoint = st.fixed_dictionaries({"host": st.text(max_size=5) | json_values, "port": ports})
    endpoint_data = (endpoint | endpoint.map(lambda e: {"serviceEndpoint": e})).map(
        lambda value: json.dumps(value).encode())

    @FUZZ
    @given(data=st.binary(max_size=200) | hostile_texts.map(
        lambda text: text.encode("utf-8", "surrogatepass"))
           | json_values.map(lambda value: json.dumps(value).encode()) | endpoint_data)
    def run(data):
        counted()
        assert names_endpoint(data, "h", 1) in (True, False)
        assert same_registration(data, b'{"pid":1}') in (True, False)
        for host, port in announced_endpoints(data):
            assert isinstance(host, str) and 0 <= port <= 65535

    run()
    counted.report()


def test_supervisorctl_plugin_arguments():
    """A supervisorctl line is outside input: the plugin's parser refuses what it
    cannot use with its own exception (one line to the user), nothing else escapes."""
    from zkwatcher_supervisor.ctlplugin import _Finished, _Usage, drain_parser

    counted = Counted("plugin arguments")
    words = st.sampled_from(["web", "--for", "--wait", "--stop", "--all", "--program",
                             "--reason", "nan", "inf", "-1", "15m", "-h", "--"])

    @FUZZ
    @given(command=st.sampled_from(["drain", "undrain"]),
           argv=st.lists(words | st.text(max_size=12), max_size=8))
    def run(command, argv):
        counted()
        try:
            args = drain_parser(command).parse_args(argv)
        except (_Usage, _Finished):
            return
        if getattr(args, "wait", None) is not None:
            assert 0 <= args.wait <= 86400

    run()
    counted.report()
