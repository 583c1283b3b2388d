"""Fixtures of the interop compat suite: one polymq process per test with all
three listeners on free ports (read from its `listening protocol=...` log
lines), stopped with SIGTERM at the end.

The binary is `$POLYMQ_BIN`, default `target/debug/polymq` (compat/run builds
it). Only runs against polymq: the stories need one broker that speaks MQTT,
AMQP and Kafka over one log.

No package `__init__.py` here on purpose: it would shadow client packages.
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
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LISTENING = re.compile(r"listening protocol=(\w+) addr=(\S+):(\d+)")


class Broker:
    def __init__(self, workdir: Path, env: dict[str, str]):
        self.workdir = workdir
        self.log_path = workdir / "polymq.log"
        self.ports: dict[str, int] = {}
        binary = Path(os.environ.get("POLYMQ_BIN", "target/debug/polymq"))
        binary = binary if binary.is_absolute() else REPO_ROOT / binary
        if not binary.exists():
            pytest.fail(f"{binary} not found: run `cargo build -p polymq-broker` or set POLYMQ_BIN", pytrace=False)
        any_port = "127.0.0.1:0"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "serve", "--data-dir", str(workdir / "data"), "--mqtt-listen", any_port,
                 "--amqp-listen", any_port, "--kafka-listen", any_port, "--http-listen", any_port, "--log", "info"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "NO_COLOR": "1", "RUST_LOG_STYLE": "never", **env},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = _ANSI.sub("", self.log_path.read_text(errors="replace"))
            self.ports = {m.group(1): int(m.group(3)) for m in _LISTENING.finditer(text)}
            if {"mqtt", "amqp", "kafka"} <= self.ports.keys():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"polymq exited with {self.proc.returncode}:\n{text[-4000:]}", pytrace=False)
            time.sleep(0.05)
        self.stop()
        pytest.fail("polymq did not log its listeners in time", pytrace=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def broker(request, tmp_path):
    if request.config.getoption("--target") != "polymq":
        pytest.skip("the interop stories need polymq itself")
    b = Broker(tmp_path, {})
    yield b
    b.stop()
