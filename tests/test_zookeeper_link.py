"""The link to ZooKeeper, against real servers: TLS that checks whom it talks
to (a secure client port with ``ssl.clientAuth=need``), SASL logins (a JAAS
file with DigestLoginModule), and secrets kept in files of their own."""

from __future__ import annotations

import logging
import os
import pwd
import re
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import trustme
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.security import ACL, Id, Permissions
from support.credentials import Credentials, private_file, tls_zookeeper
from support.proxies import ZooKeeperLink
from support.sections import section

from zkwatcher_supervisor import registry as registry_module
from zkwatcher_supervisor.config import (
    Auth,
    ConfigError,
    ServiceSettings,
    TLSSettings,
    ZooKeeperSettings,
    load_config,
)
from zkwatcher_supervisor.drain import wait_until_unadvertised
from zkwatcher_supervisor.registry import Registry
from zkwatcher_supervisor.status import locate_status
from zkwatcher_supervisor.testing import FaultProxy, LocalZooKeeper, free_port, wait_until

pytestmark = pytest.mark.e2e

def service(path: str, cmd: str = "true") -> str:
    return section("", "svc", 1, cmd=cmd, refresh=None, timeout=None, path=path)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    return Credentials(tmp_path_factory.mktemp("ours"))


@pytest.fixture(scope="module")
def right_name_zk(tmp_path_factory, ours):
    """Its certificate, from our CA, names localhost and the address 127.0.0.1."""
    server = tls_zookeeper(tmp_path_factory.mktemp("right-name"),
                           ours.ca.issue_cert("localhost", "127.0.0.1"), ours.ca_pem)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def wrong_name_zk(tmp_path_factory, ours):
    """Its certificate, from our CA, names only wrong.example."""
    server = tls_zookeeper(tmp_path_factory.mktemp("wrong-name"),
                           ours.ca.issue_cert("wrong.example"), ours.ca_pem)
    yield server
    server.stop()


@pytest.fixture
def reader():
    """Plain-port clients of the TLS servers, to see what got registered."""
    clients = []

    def connect(server: LocalZooKeeper) -> KazooClient:
        client = KazooClient(hosts=server.hosts, timeout=5)
        client.start(timeout=30)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.stop()
        client.close()


def tls_config(write_config, ours, host, server, path, name="zkwatcher.cfg", ca=True,
               keyfile=None, extra="", cmd="true"):
    keyfile = keyfile or ours.keyfile
    settings = "use_ssl = true\n" + (f"ca = {ours.ca_pem}\n" if ca else "")
    settings += f"certfile = {ours.certfile}\nkeyfile = {keyfile}\n{extra}"
    return write_config(service(path, cmd),
                        name=name, hosts=f"{host}:{server.secure_port}", settings=settings)


def logged(drv, text: str) -> None:
    """Wait for a line the listener logs (its log writer batches lines)."""
    wait_until(lambda: text in drv.stderr(), 5, what=f"{text!r} logged")


def alone(config):
    """Move ``config`` into a directory of its own: a listener's log goes beside it."""
    directory = config.parent / config.stem
    directory.mkdir()
    return config.rename(directory / "zkwatcher.cfg")


def assert_refused_once(drv, reader_client, node, reason):
    """Refused, said in one line, while the listener keeps trying (kazoo logs
    each attempt with -v): nothing registered, no line repeated."""
    wait_until(lambda: drv.stderr().count("Connecting to ") >= 4
               or "connected to ZooKeeper" in drv.stderr(), 30,
               what="four connection attempts")
    drv.tick()  # still answering supervisord
    log = drv.stderr()
    refusals = [line for line in log.splitlines() if "TLS certificate refused" in line]
    assert len(refusals) == 1, log
    assert reason in refusals[0], refusals[0]
    assert "ERROR" in refusals[0]
    assert "CERTIFICATE_VERIFY_FAILED" not in log  # kazoo's own line per attempt
    assert "connected to ZooKeeper" not in log
    assert reader_client.exists(node) is None


def test_tls_with_the_right_name_and_with_the_ip_san(
        tmp_path, write_config, driver, reader, base_path, ours, right_name_zk):
    zk = reader(right_name_zk)
    # By name: the certificate's DNS name; the key is encrypted (keyfile_password).
    by_name = tls_config(write_config, ours, "localhost", right_name_zk, f"{base_path}/name",
                         name="by-name.cfg", keyfile=ours.encrypted_keyfile,
                         extra="keyfile_password = key pass\n")
    # By address: checked against the certificate's IP SAN.
    by_ip = alone(tls_config(write_config, ours, "127.0.0.1", right_name_zk,
                             f"{base_path}/ip", name="by-ip.cfg"))
    name_drv, ip_drv = driver(by_name), driver(by_ip)
    wait_until(lambda: zk.exists(f"{base_path}/name/host1:1"), 20, what="registered by name")
    wait_until(lambda: zk.exists(f"{base_path}/ip/host1:1"), 20, what="registered by address")
    for drv in (name_drv, ip_drv):
        logged(drv, "connected to ZooKeeper")
        assert "TLS certificate refused" not in drv.stderr()


def test_tls_refuses_a_certificate_issued_for_another_name(
        tmp_path, write_config, driver, reader, base_path, ours, wrong_name_zk):
    zk = reader(wrong_name_zk)
    for host, reason in (("localhost", "Hostname mismatch, certificate is not valid for "
                                       "'localhost' (tls_check_hostname = true)"),
                         ("127.0.0.1", "IP address mismatch, certificate is not valid for "
                                       "'127.0.0.1' (tls_check_hostname = true)")):
        config = alone(tls_config(write_config, ours, host, wrong_name_zk,
                                  f"{base_path}/{host}", name=f"{host}.cfg"))
        drv = driver(config, args=("-v",))
        assert_refused_once(drv, zk, f"{base_path}/{host}/host1:1",
                            f"ZooKeeper {host}:{wrong_name_zk.secure_port}: TLS certificate "
                            f"refused: {reason}; not connecting to this server")
        # status connects the same way, and says why it could not; the listener
        # says why it is not connected.
        def status_run(config=config):
            return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "status",
                                   "-c", str(config)], capture_output=True, text=True,
                                  timeout=60)

        # The status file names the refusal within half a second of it.
        status = wait_until(lambda: "ZooKeeper DISCONNECTED (TLS" in (r := status_run()).stdout
                            and r, 10, interval=0.3, what="status shows the refusal")
        assert status.returncode == 1
        assert f"unreachable (TLS certificate refused: {reason})" in status.stdout
        assert (f"ZooKeeper DISCONNECTED (TLS certificate refused: {reason}), "
                in status.stdout), status.stdout

    # The CA is ours, so only the name was wrong: without the check it registers.
    driver(alone(tls_config(write_config, ours, "localhost", wrong_name_zk,
                            f"{base_path}/unchecked", name="unchecked.cfg",
                            extra="tls_check_hostname = false\n")))
    wait_until(lambda: zk.exists(f"{base_path}/unchecked/host1:1"), 20,
               what="registered without the name check")


def test_tls_trusts_only_ca_even_when_the_system_trusts_another(
        tmp_path, write_config, driver, reader, base_path, ours, monkeypatch):
    # A throwaway CA that "the system" trusts: the only CA in a test-local store.
    system_ca = trustme.CA()
    system_store = tmp_path / "system-store.pem"
    system_ca.cert_pem.write_to_path(str(system_store))
    server = tls_zookeeper(tmp_path / "zk", system_ca.issue_cert("localhost", "127.0.0.1"),
                           ours.ca_pem)
    try:
        zk = reader(server)
        hosts = f"127.0.0.1:{server.secure_port}"
        env = {"SSL_CERT_FILE": str(system_store)}
        # What kazoo's own TLS does with ca = our CA: it loads the system store
        # first, so a certificate from the other CA passes.
        monkeypatch.setenv("SSL_CERT_FILE", str(system_store))
        plain_kazoo = KazooClient(hosts=hosts, use_ssl=True, verify_certs=True,
                                  ca=str(ours.ca_pem), certfile=str(ours.certfile),
                                  keyfile=str(ours.keyfile), timeout=5)
        plain_kazoo.start(timeout=30)
        plain_kazoo.stop()
        plain_kazoo.close()

        for name, with_ca in (("with-ca", True), ("system", False)):
            config = alone(tls_config(write_config, ours, "127.0.0.1", server,
                                      f"{base_path}/{name}", name=f"{name}.cfg", ca=with_ca))
            if with_ca:
                drv = driver(config, env=env, args=("-v",))
                assert_refused_once(drv, zk, f"{base_path}/{name}/host1:1",
                                    "unable to get local issuer certificate (trusting only "
                                    f"{ours.ca_pem})")
            else:
                # No ca: the system store decides, and it trusts that CA.
                drv = driver(config, env=env)
                wait_until(lambda: zk.exists(f"{base_path}/system/host1:1"), 20,
                           what="registered on the system store")
    finally:
        server.stop()


def test_plain_tcp_to_the_secure_port_gets_nowhere(right_name_zk):
    plain = KazooClient(hosts=f"127.0.0.1:{right_name_zk.secure_port}", timeout=3)
    with pytest.raises(KazooTimeoutError):
        plain.start(timeout=3)
    plain.close()


def test_drain_stop_says_why_zookeeper_cannot_confirm(ours, wrong_name_zk):
    """drain --stop stops nothing it has not seen deregistered; when ZooKeeper
    cannot be asked, what it reports instead names the reason."""
    service = ServiceSettings(name="svc", zookeeper_path="/svc", service_port=1,
                              service_hostname="host1")
    tls = TLSSettings(ca=str(ours.ca_pem), certfile=str(ours.certfile),
                      keyfile=str(ours.keyfile))
    hosts = f"localhost:{wrong_name_zk.secure_port}"
    assert wait_until_unadvertised(ZooKeeperSettings(hosts=hosts, tls=tls), [service], 1.0) \
        == [f"(unknown: ZooKeeper {hosts} unreachable: TLS certificate refused: Hostname "
            "mismatch, certificate is not valid for 'localhost' (tls_check_hostname = true))"]
    closed = f"127.0.0.1:{free_port()}"
    assert wait_until_unadvertised(ZooKeeperSettings(hosts=closed), [service], 1.0) == [
        f"(unknown: ZooKeeper {closed} unreachable: no connection within 1s)"]


def test_tls_files_that_cannot_be_used_are_config_errors(tmp_path, ours):
    """Found when the config loads (exit 2, one line naming the key), never a
    password prompt and never a refused connection later."""
    other = Credentials(tmp_path / "other")

    written = []

    def config(keyfile, extra=""):
        written.append(keyfile)
        path = tmp_path / f"zkwatcher{len(written)}.cfg"
        path.write_text(textwrap.dedent(f"""\
            [zkwatcher]
            use_ssl = true
            ca = {ours.ca_pem}
            certfile = {ours.certfile}
            keyfile = {keyfile}
            {extra}
            """) + service("/svc"))
        path.chmod(0o600)
        return path

    cases = [
        (config(ours.encrypted_keyfile), f"line 5: [zkwatcher] keyfile: "
         f"{ours.encrypted_keyfile} is encrypted and no password for it is set"),
        (config(ours.encrypted_keyfile, "keyfile_password = not it"),
         f"line 6: [zkwatcher] keyfile_password: does not decrypt {ours.encrypted_keyfile}"),
        (config(other.keyfile), f"line 5: [zkwatcher] keyfile: {other.keyfile} is not the key "
         f"of {ours.certfile}"),
        (config(ours.keyfile, "tls_check_hostname = maybe"),
         "line 6: [zkwatcher] tls_check_hostname: expected true or false, got 'maybe'"),
    ]
    not_a_ca = config(ours.keyfile)
    not_a_ca.write_text(not_a_ca.read_text().replace(f"ca = {ours.ca_pem}", f"ca = {ours.keyfile}"))
    cases.append((not_a_ca, f"line 3: [zkwatcher] ca: cannot load CA certificates from "
                            f"{ours.keyfile}: no certificate or crl found"))
    for path, message in cases:
        with pytest.raises(ConfigError) as caught:
            load_config(str(path))
        assert str(caught.value) == f"{path}: {message}"
    assert load_config(str(config(ours.encrypted_keyfile, "keyfile_password = key pass")))

    # The listener loads them as it starts: exit 2 before anything connects.
    path = config(ours.encrypted_keyfile)
    started = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "-c", str(path)],
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert (started.returncode, started.stderr) == (
        2, f"zkwatcher-supervisor: {path}: {cases[0][1]}\n")
    # --check-config, which any user may run, reads none of them and says so.
    checked = subprocess.run(
        [sys.executable, "-m", "zkwatcher_supervisor", "--check-config", "-c", str(path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert checked.returncode == 0, checked.stderr
    assert (f"not read here (run reads and checks them, as its user): ca {ours.ca_pem}, "
            f"certfile {ours.certfile}, keyfile {ours.encrypted_keyfile}\n") in checked.stdout


def sasl_zookeeper(directory, users: dict[str, str], port: int | None = None) -> LocalZooKeeper:
    """A started ZooKeeper that takes SASL DIGEST-MD5 logins for ``users``."""
    directory.mkdir(parents=True, exist_ok=True)
    jaas = directory / "jaas.conf"
    entries = "".join(f'  user_{user}="{password}"\n' for user, password in users.items())
    jaas.write_text("Server {\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n"
                    + entries.rstrip("\n") + ";\n};\n")
    server = LocalZooKeeper(directory, port=port)
    server.extra_config = [
        "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider"]
    server.jvm_options = [f"-Djava.security.auth.login.config={jaas}"]
    return server.start()


def sasl_client(server: LocalZooKeeper, user: str, password: str) -> KazooClient:
    client = KazooClient(hosts=server.hosts, timeout=5, sasl_options={
        "mechanism": "DIGEST-MD5", "username": user, "password": password})
    client.start(timeout=30)
    return client


def sasl_config(write_config, server, path, password, user="deploy"):
    return write_config(service(path) + textwrap.dedent(f"""
        [auth]
        mechanism = DIGEST-MD5
        user = {user}
        password = {password}
        """), hosts=server.hosts)


def test_sasl_login_and_the_acl_it_gives(tmp_path, write_config, driver, reader, base_path):
    server = sasl_zookeeper(tmp_path / "zk", {"deploy": "s3cret", "intruder": "other"})
    try:
        config = sasl_config(write_config, server, f"{base_path}/svc", "s3cret")
        config.chmod(0o600)
        drv = driver(config, args=("-v",))
        anyone = reader(server)
        node = f"{base_path}/svc/host1:1"
        wait_until(lambda: anyone.exists(node), 20, what="registered over SASL")
        logged(drv, "connected to ZooKeeper (SASL DIGEST-MD5 as 'deploy')")
        # Our node and the parent we created: sasl:deploy may do all, the world may read.
        expected = sorted([ACL(Permissions.ALL, Id("sasl", "deploy")),
                           ACL(Permissions.READ, Id("world", "anyone"))], key=str)
        for path in (node, f"{base_path}/svc"):
            assert sorted(anyone.get_acls(path)[0], key=str) == expected
        assert anyone.get_acls(base_path)[0] == [ACL(Permissions.ALL, Id("world", "anyone"))]
        # Nobody else can take the registration away, another SASL user included.
        intruder = sasl_client(server, "intruder", "other")
        try:
            for client in (anyone, intruder):
                with pytest.raises(NoAuthError):
                    client.delete(node)
                with pytest.raises(NoAuthError):
                    client.set(node, b"forged")
        finally:
            intruder.stop()
            intruder.close()
        assert anyone.exists(node)
        assert "s3cret" not in drv.stderr()  # not even in kazoo's debug lines
    finally:
        server.stop()


def test_sasl_refused_password_is_one_line_and_no_crash_loop(
        tmp_path, write_config, driver, reader, base_path):
    server = sasl_zookeeper(tmp_path / "zk", {"deploy": "old-secret"})
    try:
        config = sasl_config(write_config, server, f"{base_path}/svc", "new-secret")
        drv = driver(config, args=("-v",))
        anyone = reader(server)
        node = f"{base_path}/svc/host1:1"
        # The first refusal and two new connections after it (2 s, then 4 s later).
        wait_until(lambda: drv.stderr().count("Connecting to ") >= 3, 30,
                   what="three logins tried")
        drv.tick()  # alive, still answering supervisord
        assert drv.process.poll() is None
        log = drv.stderr()
        refused = [line for line in log.splitlines() if "refused our credentials" in line]
        assert refused == [line for line in log.splitlines() if " ERROR " in line], log
        assert refused[0].endswith(
            "ERROR ZooKeeper refused our credentials ([auth] SASL DIGEST-MD5, user 'deploy'): "
            "nothing can be registered until it accepts them; trying again every 30s at most")
        assert "AUTH_FAILED closing" not in log
        assert "connected to ZooKeeper" not in log
        assert anyone.exists(node) is None
        assert "new-secret" not in log

        # status asks ZooKeeper without credentials; the refusal is the listener's word.
        def status():
            return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "status",
                                   "-c", str(config)], capture_output=True, text=True,
                                  timeout=60)

        refused_line = ("ZooKeeper DISCONNECTED (ZooKeeper refused our credentials ([auth] "
                        "SASL DIGEST-MD5, user 'deploy'))")
        shown = wait_until(lambda: (r := status()).returncode == 1 and refused_line in r.stdout
                           and r, 10, interval=0.3, what="status shows the refusal")
        assert f"BAD  [svc] {node} not registered, healthy" in shown.stdout

        # The server is given the new password (a rotation done client side
        # first): the listener gets in by itself and registers.
        anyone.stop()
        server.stop()
        server = sasl_zookeeper(tmp_path / "zk", {"deploy": "new-secret"}, port=server.port)
        anyone = reader(server)
        wait_until(lambda: anyone.exists(node), 45, what="registered once accepted")
        assert drv.stderr().count("refused our credentials") == 1
    finally:
        server.stop()


def test_sasl_session_survives_a_server_restart(
        tmp_path, write_config, driver, reader, base_path):
    """The connection to a restarting server may drop in the middle of the SASL
    login, which kazoo reports as AUTH_FAILED (and forgets its session): a
    drop, not a refused login.  The listener goes back to the same session, so
    its node is the very one it had (a new session would leave the old one's
    node up until it expired, even for a section gone down meanwhile).  The
    proxy cuts the first login after the restart, where a restart may."""
    server = sasl_zookeeper(tmp_path / "zk", {"deploy": "s3cret"})
    proxy = FaultProxy(server.port)
    try:
        config = write_config(service(f"{base_path}/svc") + textwrap.dedent("""
            [auth]
            mechanism = DIGEST-MD5
            user = deploy
            password = s3cret
            """), hosts=proxy.hosts, session_timeout=10)
        config.chmod(0o600)
        drv = driver(config)
        node = f"{base_path}/svc/host1:1"
        anyone = reader(server)
        wait_until(lambda: anyone.exists(node), 20, what="registered over SASL")
        before = anyone.exists(node)
        logged(drv, "connected to ZooKeeper (SASL DIGEST-MD5 as 'deploy')")

        server.stop()  # same port and data directory: the sessions survive the restart
        proxy.cut_logins(1)
        server = sasl_zookeeper(tmp_path / "zk", {"deploy": "s3cret"}, port=server.port)
        wait_until(lambda: drv.stderr().count("connected to ZooKeeper (SASL") == 2, 30,
                   what="logged in again")
        assert proxy.logins_cut == 1
        assert ("WARNING ZooKeeper connection dropped during the SASL login; reconnecting "
                "to the same session") in drv.stderr()
        after = reader(server).exists(node)
        assert (after.ephemeralOwner, after.czxid) == (before.ephemeralOwner, before.czxid)
        session = wait_until(lambda: (locate_status(str(config))[1] or {})
                             .get("zookeeper", {}).get("session"), 5, what="session published")
        assert session == f"0x{before.ephemeralOwner:x}"
        log = drv.stderr()
        assert " ERROR " not in log and "refused our credentials" not in log, log
        assert "held by another session" not in log, log
    finally:
        proxy.close()
        server.stop()


def deploy_registry(hosts: str) -> Registry:
    """A Registry logging in as deploy (SASL DIGEST-MD5) through ``hosts``."""
    return Registry(ZooKeeperSettings(hosts=hosts, session_timeout=30,
                                      auth=Auth("deploy", "s3cret", "DIGEST-MD5")))


def close_all(registry, relay, anyone, server) -> None:
    if registry is not None:
        registry.stop()
    relay.close()
    anyone.stop()
    anyone.close()
    server.stop()


def test_a_slow_sasl_login_confirmation_still_registers(tmp_path, base_path, monkeypatch):
    """The first read on a new SASL connection confirms the login; when its answer
    comes later than the worker waits for one, registering follows as it comes."""
    server = sasl_zookeeper(tmp_path / "zk", {"deploy": "s3cret"})
    proxy = FaultProxy(server.port)
    anyone = KazooClient(hosts=server.hosts, timeout=5)
    registry = None
    held = []
    original = KazooClient.exists_async

    def exists_async(client, path, watch=None):
        if path == "/" and not held:  # the confirmation: its answer arrives 3 s late
            held.append(True)
            proxy.freeze()
            threading.Timer(3.0, proxy.restore).start()
        return original(client, path, watch=watch)

    try:
        anyone.start(timeout=30)
        monkeypatch.setattr(registry_module, "REPLY_TIMEOUT", 1.0)
        monkeypatch.setattr(KazooClient, "exists_async", exists_async)
        registry = deploy_registry(proxy.hosts)
        node = f"{base_path}/svc/host1:1"
        registry.update({node: b"{}"})
        registry.start()
        wait_until(lambda: held, 20, what="the login confirmed by a read")
        wait_until(lambda: anyone.exists(node), 15, what="registered after the late answer")
        assert registry.connected
    finally:
        close_all(registry, proxy, anyone, server)


def test_a_throttled_sasl_login_confirmation_is_tried_again(tmp_path, base_path, caplog):
    """ZooKeeper throttles (error -127) the read that confirms a SASL login.  No
    state change follows to wake the worker: it must try again by itself, after
    its backoff (not sooner, though wishes wake it meanwhile), and register."""
    server = sasl_zookeeper(tmp_path / "zk", {"deploy": "s3cret"})
    link = ZooKeeperLink(server.port)
    anyone = KazooClient(hosts=server.hosts, timeout=5)
    registry = None
    caplog.set_level(logging.INFO, logger=registry_module.__name__)
    try:
        anyone.start(timeout=30)
        link.refuse(EXISTS, THROTTLED, count=1)
        registry = deploy_registry(link.hosts)
        node = f"{base_path}/svc/host1:1"
        registry.update({node: b"{}"})
        started = time.monotonic()
        registry.start()
        wait_until(lambda: any(op == EXISTS for _, op in link.requests), 10,
                   what="the confirming read sent")
        first_wish = time.monotonic()
        for port in range(2, 6):  # wishes during the backoff wake the worker
            registry.update({f"{base_path}/svc/host1:{port}": b"{}"})
            time.sleep(0.05)
        wait_until(lambda: anyone.exists(node), 10, what="registered after the throttled read")
        print(f"registered {time.monotonic() - started:.2f}s after start")
        assert "ZooKeeper refused confirming the login (ThrottledOpError" in caplog.text
        confirming = [t for t, op in link.requests if op == EXISTS]
        assert len(confirming) >= 2 and confirming[1] - confirming[0] >= 0.45, confirming
        assert first_wish < confirming[0] + 0.45  # the wishes did come during the backoff
        assert registry.connected
    finally:
        close_all(registry, link, anyone, server)


EXISTS, THROTTLED = 3, -127  # ZooKeeper's opcode and error code


def foreign_file(tmp_path):
    """A file private to another user: as root, one given to nobody; otherwise
    one of root's."""
    if os.geteuid() != 0:
        return "/etc/passwd", "root"
    path = private_file(tmp_path / "nobodys-secret", "s3cret\n")
    os.chown(path, 65534, 65534)
    return str(path), "nobody"


def test_secret_files_must_be_private_to_the_listeners_user(tmp_path, ours):
    """password_file, keyfile and keyfile_password_file: refused when they are not
    ours or group or others may read or write them (exit 2, one line naming the
    file, section and key)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    written = []

    def config(auth="", tls=""):
        written.append(1)
        path = tmp_path / f"zkwatcher{len(written)}.cfg"
        path.write_text(f"[zkwatcher]\n{tls}\n" + (f"[auth]\nuser = deploy\n{auth}\n"
                                                    if auth else "")
                        + service("/svc"))
        path.chmod(0o600)
        return path

    def tls(keyfile, extra=""):
        return (f"use_ssl = true\nca = {ours.ca_pem}\ncertfile = {ours.certfile}\n"
                f"keyfile = {keyfile}\n{extra}")

    group_readable = private_file(tmp_path / "group-readable", "s3cret\n", 0o640)
    world_writable = private_file(tmp_path / "world-writable", "s3cret\n", 0o602)
    empty = private_file(tmp_path / "empty", "\n")
    foreign, owner = foreign_file(tmp_path)
    open_key = tmp_path / "open.key"
    open_key.write_bytes(ours.encrypted_keyfile.read_bytes())
    open_key.chmod(0o644)
    wrong_pass = private_file(tmp_path / "wrong-pass", "not it\n")

    def mode(path, bits):
        return (f"{path} is readable or writable by group or others (mode {bits}); "
                f"chmod go-rw {path}")

    cases = [
        (config(f"password_file = {group_readable}"),
         f"line 5: [auth] password_file: {mode(group_readable, '0640')}"),
        (config(f"password_file = {world_writable}"),
         f"line 5: [auth] password_file: {mode(world_writable, '0602')}"),
        (config(f"password_file = {foreign}"),
         f"line 5: [auth] password_file: {foreign} belongs to {owner}, not to {me} (the user "
         f"the listener runs as); chown {me} {foreign}"),
        (config(f"password_file = {empty}"), f"line 5: [auth] password_file: {empty} is empty"),
        (config(f"password_file = {tmp_path}/missing"),
         f"line 5: [auth] password_file: cannot read {tmp_path}/missing: No such file or "
         "directory"),
        (config(f"password = inline\npassword_file = {empty}"),
         "line 6: [auth] password_file: set password or password_file, not both"),
        (config(tls=tls(open_key, "keyfile_password = key pass")),
         f"line 5: [zkwatcher] keyfile: {mode(open_key, '0644')}"),
        (config(tls=tls(ours.encrypted_keyfile, f"keyfile_password_file = {group_readable}")),
         f"line 6: [zkwatcher] keyfile_password_file: {mode(group_readable, '0640')}"),
        (config(tls=tls(ours.encrypted_keyfile, f"keyfile_password_file = {wrong_pass}")),
         f"line 6: [zkwatcher] keyfile_password_file: does not decrypt {ours.encrypted_keyfile}"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError) as caught:
            load_config(str(path))
        assert str(caught.value) == f"{path}: {message}"

    path = cases[0][0]
    started = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "-c", str(path)],
                             capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    assert (started.returncode, started.stderr) == (2, f"zkwatcher-supervisor: {path}: "
                                                       f"{cases[0][1]}\n")

    # A symlink (as Kubernetes mounts secrets) is followed and its target checked.
    link = tmp_path / "linked-secret"
    link.symlink_to(group_readable)
    with pytest.raises(ConfigError, match=re.escape(f"[auth] password_file: {mode(link, '0640')}")):
        load_config(str(config(f"password_file = {link}")))
    target = private_file(tmp_path / "target", "via link\n")
    link.unlink()
    link.symlink_to(target)
    assert load_config(str(config(f"password_file = {link}"))).zookeeper.auth.password == \
        "via link"

    # Private files load; the secret is the text less its newline, and shows in no repr.
    password = private_file(tmp_path / "password", "pass word\n")
    key_pass = private_file(tmp_path / "key-pass", "key pass\r\n")
    loaded = load_config(str(config(f"password_file = {password}", tls(
        ours.encrypted_keyfile, f"keyfile_password_file = {key_pass}"))))
    assert loaded.zookeeper.auth.password == "pass word"
    assert loaded.zookeeper.tls.keyfile_password == "key pass"
    assert not loaded.warnings  # no password in the config file itself
    assert "pass word" not in repr(loaded) and "key pass" not in repr(loaded)


def test_secrets_from_files_reach_zookeeper_and_nowhere_else(
        tmp_path, write_config, driver, reader, base_path, ours, right_name_zk):
    """The SASL password and the key's password come from files; neither shows
    in the log (with -v, kazoo's debug lines too) nor in a check's command
    line, environment, or its parent's (the listener's) command line."""
    sasl = sasl_zookeeper(tmp_path / "zk", {"deploy": "sasl-from-file"})
    try:
        password = private_file(tmp_path / "sasl-password", "sasl-from-file\n")
        key_pass = private_file(tmp_path / "key-pass", "key pass\n")
        # What a check sees: the listener's command line (its parent's), its own, its
        # environment.  No shell syntax, so the listener spawns it directly.
        script = tmp_path / "check.sh"
        script.write_text('tr "\\\\0" " " < /proc/$PPID/cmdline > "$1"; echo >> "$1"\n'
                          'tr "\\\\0" " " < /proc/$$/cmdline >> "$1"; echo >> "$1"\n'
                          'env >> "$1"\n')
        seen = {name: tmp_path / f"seen-by-{name}-check" for name in ("sasl", "tls")}
        check = f"sh {script} {seen['sasl']}"
        sasl_body = textwrap.dedent(f"""
            [svc]
            cmd = {check}
            service_port = 1
            service_hostname = host1
            zookeeper_path = {base_path}/sasl

            [auth]
            mechanism = DIGEST-MD5
            user = deploy
            password_file = {password}
            """)
        sasl_config_path = alone(write_config(sasl_body, name="sasl.cfg", hosts=sasl.hosts))
        tls_path = tls_config(write_config, ours, "localhost", right_name_zk, f"{base_path}/tls",
                              keyfile=ours.encrypted_keyfile,
                              extra=f"keyfile_password_file = {key_pass}\n",
                              cmd=f"sh {script} {seen['tls']}")
        sasl_drv = driver(sasl_config_path, args=("-v",))
        tls_drv = driver(tls_path, args=("-v",))
        wait_until(lambda: reader(sasl).exists(f"{base_path}/sasl/host1:1"), 20,
                   what="registered with the SASL password from its file")
        wait_until(lambda: reader(right_name_zk).exists(f"{base_path}/tls/host1:1"), 20,
                   what="registered with the key's password from its file")
        logged(sasl_drv, "connected to ZooKeeper (SASL DIGEST-MD5 as 'deploy')")
        for drv in (sasl_drv, tls_drv):
            assert "DEBUG" in drv.stderr()  # kazoo's chatter is in, the secrets are not
            assert "sasl-from-file" not in drv.stderr()
            assert "key pass" not in drv.stderr()
        for name, config in (("sasl", sasl_config_path), ("tls", tls_path)):
            observed = seen[name].read_text()
            assert f"-m zkwatcher_supervisor -c {config}" in observed  # the listener's argv
            assert f"sh {script} {seen[name]}" in observed  # the check's
            assert "PATH=" in observed  # and its environment
            assert "sasl-from-file" not in observed
            assert "key pass" not in observed
    finally:
        sasl.stop()


def test_sasl_without_pure_sasl_is_a_config_error(tmp_path):
    path = tmp_path / "zkwatcher.cfg"
    path.write_text("[auth]\nmechanism = DIGEST-MD5\nuser = deploy\npassword = unseen\n"
                    + service("/svc"))
    path.chmod(0o600)
    hidden = ("import sys; sys.modules['puresasl'] = None; "  # as if it were not installed
              "from zkwatcher_supervisor.cli import main; "
              f"sys.exit(main(['--check-config', '-c', {str(path)!r}]))")
    checked = subprocess.run([sys.executable, "-c", hidden], capture_output=True, text=True,
                             timeout=60)
    assert (checked.returncode, checked.stderr) == (
        2, f"zkwatcher-supervisor: {path}: line 2: [auth] mechanism: DIGEST-MD5 needs the "
           "pure-sasl package (pip install 'zkwatcher-supervisor[sasl]')\n")
    shown = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "--check-config",
                            "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0
    assert "auth=deploy (SASL DIGEST-MD5)" in shown.stdout
    assert "unseen" not in shown.stdout + shown.stderr
