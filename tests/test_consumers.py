"""Each payload format read by the reader its users run: Prometheus'
``serverset_sd_configs`` (Debian's ``prometheus``), Apache Curator's own
``ServiceDiscovery`` (Debian's ``libcurator-discovery-java``) and a kazoo
``ChildrenWatch`` (Nerve's readers: tests/test_nerve.py).  Real ZooKeeper,
supervisord and listener; a section is healthy while its supervisord program
runs."""

from __future__ import annotations

import re
import textwrap
import threading

import pytest
from support.sections import listener_section, programs

from zkwatcher_supervisor.testing import wait_until
from zkwatcher_supervisor.testing.consumers import CuratorReader, LocalPrometheus

pytestmark = pytest.mark.e2e



def section(name: str, path: str, port: int, payload_format: str, data: str = "",
            program: str | None = None, host: str = "127.0.0.1") -> str:
    """A section bound to ``program`` (default: its own name), or never healthy without one."""
    health = f"program = {program or name}" if program != "" else "cmd = false\nrefresh = 1"
    return textwrap.dedent(f"""
        [{name}]
        {health}
        service_port = {port}
        service_hostname = {host}
        zookeeper_path = {path}
        payload_format = {payload_format}
        zookeeper_data = {data}
        """).replace("\n        ", "\n")


@pytest.fixture
def prometheus(tmp_path, zookeeper):
    started: list[LocalPrometheus] = []

    def start(sd_configs: dict[str, tuple[str, list[str]]]) -> LocalPrometheus:
        server = LocalPrometheus(tmp_path / f"prometheus{len(started)}", zookeeper.hosts,
                                 sd_configs)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def test_prometheus_serverset_sd_lists_exactly_the_healthy_members(
        write_config, supervisord, prometheus, zk, base_path):
    path = f"{base_path}/serverset/web"
    admin = '{"shard": 1, "additionalEndpoints": {"admin": {"host": "127.0.0.1", "port": 9901}}}'
    config = write_config(
        section("web1", path, 8001, "serverset", admin)
        + section("web2", path, 8002, "serverset", '{"shard": 2}')
        + section("sick", path, 8003, "serverset", program=""))
    zk.ensure_path(path)
    server = prometheus({"web": ("serverset", [path])})
    programs_server = supervisord(programs("web1", "web2") + listener_section(config))

    targets = wait_until(lambda: len(t := server.targets("web")) == 2 and t, 60, interval=0.2,
                         what="both members in Prometheus")
    assert set(targets) == {"127.0.0.1:8001", "127.0.0.1:8002"}
    members = set(zk.get_children(path))
    assert len(members) == 2
    web1, web2 = targets["127.0.0.1:8001"], targets["127.0.0.1:8002"]
    for labels, port, shard in ((web1, "8001", "1"), (web2, "8002", "2")):
        assert re.fullmatch(re.escape(path) + r"/member_\d{10}", labels["__meta_serverset_path"])
        assert labels["__meta_serverset_path"].rsplit("/", 1)[1] in members
        assert labels["__meta_serverset_endpoint_host"] == "127.0.0.1"
        assert labels["__meta_serverset_endpoint_port"] == port
        assert labels["__meta_serverset_status"] == "ALIVE"
        assert labels["__meta_serverset_shard"] == shard
    assert web1["__meta_serverset_endpoint_host_admin"] == "127.0.0.1"
    assert web1["__meta_serverset_endpoint_port_admin"] == "9901"
    assert not any(key.endswith("_admin") for key in web2)

    assert "stopped" in programs_server.ctl("stop", "web2").stdout
    member = web2["__meta_serverset_path"]
    wait_until(lambda: zk.exists(member) is None, 10, what="web2's member deleted")
    wait_until(lambda: set(server.targets("web")) == {"127.0.0.1:8001"}, 60, interval=0.2,
               what="web2 dropped by Prometheus")
    assert server.targets("web")["127.0.0.1:8001"] == web1



def test_curator_service_discovery_sees_exactly_the_healthy_instances(
        write_config, supervisord, zk, base_path, tmp_path, zookeeper):
    base = f"{base_path}/discovery"
    config = write_config(
        section("api1", f"{base}/api", 9001, "curator", '{"zone": "a"}')
        + section("api2", f"{base}/api", 9002, "curator")
        + section("worker", f"{base}/worker", 7001, "curator", "queue=jobs")
        + section("sick", f"{base}/api", 9003, "curator", program=""))
    server = supervisord(programs("api1", "api2", "worker") + listener_section(config))
    reader = CuratorReader(tmp_path / "curator", zookeeper.hosts, base).start()
    try:
        def seen():
            view = reader.read()
            ids = {name: sorted(i["id"] for i in instances)
                   for name, instances in view["instances"].items()}
            provided = {name: sorted(i["id"] for i in instances)
                        for name, instances in view["provider"].items()}
            return view, ids, provided

        both = {"api": ["127.0.0.1:9001", "127.0.0.1:9002"], "worker": ["127.0.0.1:7001"]}
        view, _, _ = wait_until(lambda: (s := seen())[1] == both and s[2] == both and s, 60,
                                interval=0.2, what="Curator sees both api instances and worker")
        assert view["names"] == ["api", "worker"]
        by_id = {i["id"]: i for instances in view["instances"].values() for i in instances}
        assert by_id["127.0.0.1:9001"]["payload"] == {"zone": "a"}
        assert by_id["127.0.0.1:9002"]["payload"] is None
        assert by_id["127.0.0.1:7001"]["payload"] == {"queue": "jobs"}
        for instance_id, instance in by_id.items():
            assert instance["address"] == "127.0.0.1"
            assert str(instance["port"]) == instance_id.split(":")[1]
            assert instance["serviceType"] == "DYNAMIC" and instance["enabled"] is True
            assert instance["registrationTimeUTC"] > 0
        for instances in view["provider"].values():
            for instance in instances:
                assert instance == by_id[instance["id"]]

        assert "stopped" in server.ctl("stop", "api2").stdout
        one = {"api": ["127.0.0.1:9001"], "worker": ["127.0.0.1:7001"]}
        wait_until(lambda: (s := seen())[1] == one and s[2] == one, 30, interval=0.1,
                   what="Curator (queries and provider) dropped api2")
    finally:
        reader.stop()


# Per format: the child name one healthy section makes, for host 127.0.0.1.
CHILD_NAMES = {
    "nd_service_registry": r"127\.0\.0\.1:{port}",
    "serverset": r"member_\d{{10}}",
    "curator": r"127\.0\.0\.1:{port}",
    "nerve": r"127\.0\.0\.1_\d{{10}}",  # instance_id: service_hostname by default
}


def test_kazoo_children_watch_sees_one_node_per_healthy_section_in_every_format(
        write_config, supervisord, zk, base_path):
    body, names, watched = "", [], {}
    for index, payload_format in enumerate(CHILD_NAMES):
        path = f"{base_path}/{payload_format}"
        name = f"up{index}"
        body += section(name, path, 8100 + index, payload_format)
        body += section(f"sick{index}", path, 8200 + index, payload_format, program="")
        names.append(name)
        zk.ensure_path(path)
        watched[payload_format] = []
    lock = threading.Lock()

    def recorder(payload_format):
        def record(children):
            with lock:
                watched[payload_format].append(sorted(children))
        return record

    for payload_format in CHILD_NAMES:
        zk.ChildrenWatch(f"{base_path}/{payload_format}", recorder(payload_format))
    config = write_config(body)
    server = supervisord(programs(*names) + listener_section(config))

    def latest():
        with lock:
            return {fmt: views[-1] for fmt, views in watched.items()}

    wait_until(lambda: all(len(children) == 1 for children in latest().values()), 30,
               what="one child per format")
    for index, (payload_format, pattern) in enumerate(CHILD_NAMES.items()):
        (child,) = latest()[payload_format]
        assert re.fullmatch(pattern.format(port=8100 + index), child), (payload_format, child)
    assert server.ctl("stop", *names).stdout.count("stopped") == len(names)
    wait_until(lambda: all(children == [] for children in latest().values()), 15,
               what="every watch saw its node go")
    with lock:
        for payload_format, views in watched.items():
            assert max(len(children) for children in views) == 1, (payload_format, views)
