"""What a secured link to ZooKeeper needs: a CA and certificates in files, a TLS
ZooKeeper that checks them, and secret files."""

from __future__ import annotations

from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

from zkwatcher_supervisor.testing import LocalZooKeeper, free_port


def pkcs8(cert: trustme.LeafCert, password: bytes | None = None) -> bytes:
    """The certificate's key as PKCS#8 PEM (ZooKeeper's PEM key store reads no other)."""
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


class Credentials:
    """Our CA, a client certificate it issued, and their files."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_pem = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        client = self.ca.issue_cert("zkwatcher-client")
        self.certfile = directory / "client.pem"
        client.cert_chain_pems[0].write_to_path(str(self.certfile))
        self.keyfile = directory / "client.key"
        self.keyfile.write_bytes(pkcs8(client))
        self.keyfile.chmod(0o600)
        self.encrypted_keyfile = directory / "client-encrypted.key"
        self.encrypted_keyfile.write_bytes(pkcs8(client, b"key pass"))
        self.encrypted_keyfile.chmod(0o600)


def tls_zookeeper(directory: Path, server_cert: trustme.LeafCert,
                  client_ca_pem: Path) -> LocalZooKeeper:
    """A started ZooKeeper presenting ``server_cert`` on its secure port and wanting a
    client certificate from ``client_ca_pem``; its plain port is for the test's reader."""
    directory.mkdir(parents=True, exist_ok=True)
    keystore = directory / "server.pem"
    keystore.write_bytes(pkcs8(server_cert)
                         + b"".join(pem.bytes() for pem in server_cert.cert_chain_pems))
    server = LocalZooKeeper(directory)
    server.secure_port = free_port()
    server.extra_config = [
        "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
        f"secureClientPort={server.secure_port}",
        f"ssl.keyStore.location={keystore}",
        "ssl.keyStore.type=PEM",
        f"ssl.trustStore.location={client_ca_pem}",
        "ssl.trustStore.type=PEM",
        "ssl.clientAuth=need",
    ]
    return server.start()


def private_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path
