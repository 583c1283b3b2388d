"""Fixtures of the AMQP compat suite: a polymq process per test.

The binary is `$POLYMQ_BIN`, default `target/debug/polymq` under the repo root
(build it with `cargo build -p polymq-broker`). Each broker gets a temporary
data directory; its AMQP port is read from the `listening protocol=amqp` log
line; it is stopped with SIGTERM at the end of the test.

No package `__init__.py` here on purpose: a package named `amqp` would shadow
py-amqp, which kombu and Celery import.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# Generous: a debug build on a shared 2-core machine.
START_TIMEOUT = 30.0
# polymq drains connections for up to 5 s after SIGTERM.
STOP_TIMEOUT = 15.0

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LISTENING = re.compile(r"listening protocol=amqp addr=(\S+):(\d+)")


def polymq_binary() -> Path:
    path = Path(os.environ.get("POLYMQ_BIN", "target/debug/polymq"))
    return path if path.is_absolute() else REPO_ROOT / path


class Polymq:
    """One polymq process on a data directory; restartable on the same data."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        # Extra environment (POLYMQ_* settings) for this broker.
        self.env = env or {}
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0

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
        pytest.fail(f"polymq did not log its AMQP address within {START_TIMEOUT} s:\n{self.log_tail()}", pytrace=False)

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
