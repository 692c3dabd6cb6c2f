"""Pytest fixtures for MQTT tests: private mosquitto brokers on free ports.

``mosquitto`` is one anonymous broker shared by the whole session (use unique topics:
retained messages stay on it). ``mosquitto_factory(...)`` starts a broker of the
test's own — with users, an ACL, or to kill and restart — and stops it afterwards.
Both fail the test when the mosquitto binary is not installed: .ci/run installs it.
"""

from __future__ import annotations

import pytest

from support.mosquitto import MosquittoBroker, find_mosquitto

from edgezo.errors import EdgezoError


def _require_mosquitto() -> None:
    try:
        find_mosquitto()
    except EdgezoError as exc:
        pytest.fail(f"{exc} (.ci/run installs it)")


@pytest.fixture(scope="session")
def mosquitto():
    """An anonymous mosquitto for the whole session."""
    _require_mosquitto()
    with MosquittoBroker() as broker:
        yield broker


@pytest.fixture
def mosquitto_factory():
    """``make(password_file={user: pw}, acl_file=text, allow_anonymous=...)`` -> a fresh MosquittoBroker."""
    _require_mosquitto()
    started: list[MosquittoBroker] = []

    def make(**options) -> MosquittoBroker:
        broker = MosquittoBroker(**options)
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.__exit__(None, None, None)


@pytest.fixture(scope="module")
def rabbit_cluster():
    """A two-node RabbitMQ cluster with the MQTT plugin, private to the test module (each node
    its own name and ports). A test that stops a node leaves it stopped: ``ensure_running``."""
    from support.rabbitmq import RabbitCluster, find_rabbitmq

    try:
        find_rabbitmq()
    except EdgezoError as exc:
        pytest.fail(f"{exc} (.ci/run installs it)")
    with RabbitCluster(nodes=2) as cluster:
        yield cluster
