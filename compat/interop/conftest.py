"""Fixtures of the interop compat suite: one polymq process per test with all
three listeners on free ports (read from its `listening protocol=...` log
lines), stopped with SIGTERM at the end.

The binary is `$POLYMQ_BIN`, default `target/debug/polymq` (compat/run builds
it). Only runs against polymq: the stories need one broker that speaks MQTT,
AMQP and Kafka over one log.

No package `__init__.py` here on purpose: it would shadow client packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from polymq_process import PytestPolymq  # noqa: E402


@pytest.fixture
def broker(request, tmp_path):
    if request.config.getoption("--target") != "polymq":
        pytest.skip("the interop stories need polymq itself")
    b = PytestPolymq(tmp_path)
    b.start()
    yield b
    b.stop()
