"""Node data in each payload_format, decoded as its consumers decode it.  Real
supervisord, real ZooKeeper."""

from __future__ import annotations

import json
import re
import time

import pytest
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e


def test_payload_formats_decode_as_their_consumers_expect(write_config, driver, zk, base_path):
    config = write_config(f"""
        [finagle]
        cmd = true
        service_port = 8080
        service_hostname = web1.example.com
        zookeeper_path = {base_path}/serverset/web
        zookeeper_data = {{"shard": 3}}
        payload_format = serverset

        [curator]
        cmd = true
        service_port = 9090
        service_hostname = 10.0.0.7
        zookeeper_path = {base_path}/discovery/api
        zookeeper_data = {{"zone": "a"}}
        payload_format = curator

        [classic]
        cmd = true
        service_port = 80
        service_hostname = web1
        zookeeper_path = {base_path}/classic
        """)
    before = int(time.time() * 1000)
    driver(config)
    # Finagle lists children named member_* under the ServerSet path.
    serverset = f"{base_path}/serverset/web"
    wait_until(lambda: zk.exists(serverset) and zk.get_children(serverset), 10, what="serverset")
    (member,) = zk.get_children(serverset)
    assert re.fullmatch(r"member_\d{10}", member), member  # Finagle parses the number
    data = json.loads(zk.get(f"{serverset}/{member}")[0])
    assert data == {"serviceEndpoint": {"host": "web1.example.com", "port": 8080},
                    "additionalEndpoints": {}, "status": "ALIVE", "shard": 3}

    # Curator x-discovery: <basePath>/<name>/<id>, ServiceInstance JSON.
    instance_path = f"{base_path}/discovery/api/10.0.0.7:9090"
    wait_until(lambda: node_exists(zk, instance_path), 10, what="curator instance")
    instance = json.loads(zk.get(instance_path)[0])
    assert instance["name"] == "api" and instance["id"] == "10.0.0.7:9090"
    assert instance["address"] == "10.0.0.7" and instance["port"] == 9090
    assert instance["serviceType"] == "DYNAMIC"
    assert instance["payload"] == {"zone": "a"}
    assert isinstance(instance["registrationTimeUTC"], int)
    assert before <= instance["registrationTimeUTC"] <= int(time.time() * 1000)
    assert instance["sslPort"] is None and instance["uriSpec"] is None

    classic = json.loads(zk.get(f"{base_path}/classic/web1:80")[0])
    assert set(classic) == {"pid", "created"}
