"""Fixtures of the AMQP compat suite: a polymq process per test.

The binary is `$POLYMQ_BIN`, default `target/debug/polymq` under the repo root
(build it with `cargo build -p polymq-broker`). Each broker gets a temporary
data directory and free ports (`compat/polymq_process.py`); it is stopped with
SIGTERM at the end of the test.

No package `__init__.py` here on purpose: a package named `amqp` would shadow
py-amqp, which kombu and Celery import.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polymq_process import PytestPolymq, polymq_binary  # noqa: E402


class Polymq(PytestPolymq):
    """One polymq process on a data directory; restartable on the same data."""

    @property
    def port(self) -> int:
        return self.ports["amqp"]

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def pika_url_for(self, vhost: str) -> str:
        from urllib.parse import quote

        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    @property
    def pika_url(self) -> str:
        # pika reads the vhost from the path verbatim: `//` would be vhost ""
        # (refused by RabbitMQ too); `/` is spelled %2F.
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"


@pytest.fixture
def polymq(tmp_path):
    broker = Polymq(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def polymq_with(tmp_path):
    """A factory: `polymq_with({"POLYMQ_AMQP_VHOSTS": "/,dev"})` starts a broker with those settings."""
    brokers = []

    def start(env: dict[str, str]) -> Polymq:
        broker = Polymq(tmp_path / f"b{len(brokers)}", env)
        brokers.append(broker)
        broker.start()
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def pytest_report_header(config):
    return f"AMQP compat: polymq at {polymq_binary()}"
