"""Fixtures of the Kafka compat suite: a polymq process per test.

The binary is `$POLYMQ_BIN`, default `target/debug/polymq` under the repo root
(compat/run builds it). Each broker gets a temporary data directory and free
ports (`compat/polymq_process.py`); it is stopped with
SIGTERM at the end of the test and can be restarted on the same data (on a new
port: clients made before a restart must be made again).

With `--target HOST:PORT` the suites run against a Kafka-wire broker already
running there (tests that restart the broker are skipped).

No package `__init__.py` here on purpose: a package named `kafka` would shadow
kafka-python.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polymq_process import PytestPolymq as Polymq, polymq_binary  # noqa: E402


class External:
    """A Kafka-wire broker someone else runs (`--target HOST:PORT`)."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap

    def restart(self) -> None:
        pytest.skip("restarting needs a broker this suite starts")


def _target(config) -> str:
    return config.getoption("--target")


@pytest.fixture
def kafka_broker(request, tmp_path):
    """A fresh polymq (or the external target) per test; `.bootstrap` is host:port."""
    target = _target(request.config)
    if target == "mosquitto":
        pytest.skip("the Kafka suite has no mosquitto target")
    if target != "polymq":
        yield External(target)
        return
    env = getattr(request, "param", None) or {}
    broker = Polymq(tmp_path, env=env)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def topic_name():
    """A topic name no other test uses (matters against an external broker)."""
    return f"t-{uuid.uuid4().hex[:12]}"


def pytest_report_header(config):
    return f"Kafka compat: polymq at {polymq_binary()}"
