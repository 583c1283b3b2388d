"""Fixtures of the Kafka compat suite: a polymq process per test.

The binary is `$POLYMQ_BIN`, default `target/debug/polymq` under the repo root
(compat/run builds it). Each broker gets a temporary data directory; its Kafka
port is read from the `listening protocol=kafka` log line; it is stopped with
SIGTERM at the end of the test and can be restarted on the same data (on a new
port: clients made before a restart must be made again).

With `--target HOST:PORT` the suites run against a Kafka-wire broker already
running there (tests that restart the broker are skipped).

No package `__init__.py` here on purpose: a package named `kafka` would shadow
kafka-python.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Generous: a debug build on a shared 2-core machine.
START_TIMEOUT = 30.0
# polymq drains connections for up to 5 s after SIGTERM.
STOP_TIMEOUT = 15.0

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LISTENING = re.compile(r"listening protocol=kafka addr=(\S+):(\d+)")


def polymq_binary() -> Path:
    path = Path(os.environ.get("POLYMQ_BIN", "target/debug/polymq"))
    return path if path.is_absolute() else REPO_ROOT / path


class Polymq:
    """One polymq process on a data directory; restartable on the same data."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"polymq-{self.starts}.log"

    def start(self) -> None:
        binary = polymq_binary()
        if not binary.exists():
            pytest.fail(f"{binary} not found: run `cargo build -p polymq-broker` or set POLYMQ_BIN", pytrace=False)
        self.starts += 1
        log = open(self.log_path, "wb")
        any_port = "127.0.0.1:0"
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--data-dir", str(self.data_dir), "--mqtt-listen", any_port,
             "--amqp-listen", any_port, "--kafka-listen", any_port, "--http-listen", any_port, "--log", "info"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1", "RUST_LOG_STYLE": "never", **self.env},
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            match = _LISTENING.search(_ANSI.sub("", self.log_path.read_text(errors="replace")))
            if match:
                self.port = int(match.group(2))
                return
            if self.proc.poll() is not None:
                pytest.fail(f"polymq exited with {self.proc.returncode} at start:\n{self.log_tail()}", pytrace=False)
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"polymq did not log its Kafka address within {START_TIMEOUT} s:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"polymq did not stop within {STOP_TIMEOUT} s of SIGTERM", pytrace=False)
        return proc.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        text = _ANSI.sub("", self.log_path.read_text(errors="replace"))
        return "\n".join(text.splitlines()[-lines:])


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
