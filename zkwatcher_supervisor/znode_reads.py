"""One-shot reads of znodes for the commands (``status``, ``drain --stop``,
``handoff``): a short-lived client of their own, never the registry's."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import contextmanager

from kazoo.client import KazooClient
from kazoo.exceptions import (
    AuthFailedError,
    ConnectionLoss,
    NoAuthError,
    NoNodeError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import ZnodeStat

from .config import ServiceSettings, ZooKeeperSettings
from .payload import names_endpoint
from .registry_decisions import sequence_prefix
from .zookeeper import make_client, refused_credentials, tls_refusals


@contextmanager
def _reading_client(settings: ZooKeeperSettings, timeout: float) -> Iterator[KazooClient]:
    """A short-lived client for a command that reads; whatever keeps it from
    answering is a ConnectionError that says why."""
    client = make_client(settings)
    try:
        try:
            client.start(timeout=timeout)
        except KazooTimeoutError:
            raise ConnectionError(tls_refusals(client.handler)
                                  or f"no connection within {timeout:.2g}s") from None
        try:
            yield client
        except AuthFailedError:
            raise ConnectionError(refused_credentials(settings)) from None
        except (ConnectionLoss, SessionExpiredError, KazooTimeoutError) as exc:
            raise ConnectionError(f"connection lost ({type(exc).__name__})") from None
    finally:
        client.stop()
        client.close()


def node_stats(settings: ZooKeeperSettings, nodes: list[str],
               timeout: float = 5.0) -> dict[str, ZnodeStat | None]:
    """Each of ``nodes``' stat (None: no such node), read by a short-lived client."""
    with _reading_client(settings, timeout) as client:
        lookups = {node: client.exists_async(node) for node in nodes}
        return {node: lookup.get(timeout=timeout) for node, lookup in lookups.items()}


def read_existing(settings: ZooKeeperSettings, nodes: list[str],
                  timeout: float = 5.0) -> dict[str, bool]:
    """Which of ``nodes`` exist (for ``status``)."""
    return {node: stat is not None
            for node, stat in node_stats(settings, nodes, timeout).items()}


def advertising(settings: ZooKeeperSettings, services: list[ServiceSettings],
                timeout: float = 5.0) -> dict[str, list[str]]:
    """For each service, the nodes that advertise its endpoint now, whoever holds them:
    its node, or for a sequential node (ServerSet, Nerve) every child of the
    parent whose data names its host and port (for ``drain --stop``).
    PermissionError for a child we may not read: whether it names the
    endpoint is unknown."""
    with _reading_client(settings, timeout) as client:
        found: dict[str, list[str]] = {}
        for service in services:
            if sequence_prefix(service.registration_key) is None:
                exists = client.exists(service.registration_key) is not None
                found[service.name] = [service.registration_key] if exists else []
                continue
            parent = posixpath.dirname(service.registration_key)
            try:
                children = client.get_children(parent)
            except NoNodeError:
                children = []
            reads = [(child, client.get_async(posixpath.join(parent, child)))
                     for child in children]
            advertised = []
            for child, read in reads:
                try:
                    data, _ = read.get(timeout=timeout)
                except NoNodeError:
                    continue
                except NoAuthError:
                    raise PermissionError(f"{posixpath.join(parent, child)}: NoAuth, its ACL "
                                          "does not let the world read it") from None
                if names_endpoint(data or b"", service.service_hostname, service.service_port):
                    advertised.append(posixpath.join(parent, child))
            found[service.name] = advertised
        return found


def owners(settings: ZooKeeperSettings, nodes: list[str], timeout: float = 5.0) -> dict[str, int]:
    """The session that holds each of ``nodes`` that exists (``handoff``'s proof)."""
    return {node: stat.ephemeralOwner
            for node, stat in node_stats(settings, nodes, timeout).items() if stat is not None}

