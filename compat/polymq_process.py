"""One polymq process for the compat suites and the reliability scripts.

The binary is `$POLYMQ_BIN`, default `target/debug/polymq` under the repo root
(compat/run builds it). The broker listens on free loopback ports for every
protocol; they are read from its `listening protocol=... addr=...` log lines.
It runs on one data directory and can be stopped (SIGTERM), killed (SIGKILL)
and started again on the same data, on new ports: clients made before a
restart must be made again.

Failures raise `PolymqError` with the tail of the broker's log; the pytest
fixtures turn it into a test failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("mqtt", "amqp", "kafka")
# Generous: a debug build on a shared 2-core machine.
START_TIMEOUT = 60.0
# polymq drains connections for up to 5 s after SIGTERM.
STOP_TIMEOUT = 15.0

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LISTENING = re.compile(r"listening protocol=(\w+) addr=(\S+):(\d+)")


class PolymqError(RuntimeError):
    pass


def polymq_binary() -> Path:
    path = Path(os.environ.get("POLYMQ_BIN", "target/debug/polymq"))
    return path if path.is_absolute() else REPO_ROOT / path


class PolymqProcess:
    """polymq on `data_dir`, its log of the n-th start in `log_dir/polymq-n.log`.

    `fsync=None` keeps the default policy; `env` adds variables (POLYMQ_*
    settings); `log` is the `--log` filter.
    """

    def __init__(self, data_dir: Path, log_dir: Path, *, fsync: str | None = None,
                 env: dict[str, str] | None = None, log: str = "info"):
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.fsync = fsync
        self.env = env or {}
        self.log_filter = log
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"polymq-{self.starts}.log"

    def start(self) -> None:
        binary = polymq_binary()
        if not binary.exists():
            raise PolymqError(f"{binary} not found: run `cargo build -p polymq-broker` or set POLYMQ_BIN")
        self.starts += 1
        any_port = "127.0.0.1:0"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "serve", "--data-dir", str(self.data_dir),
                 *(["--fsync", self.fsync] if self.fsync else []),
                 "--mqtt-listen", any_port, "--amqp-listen", any_port, "--kafka-listen", any_port,
                 "--http-listen", any_port, "--log", self.log_filter],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "NO_COLOR": "1", "RUST_LOG_STYLE": "never", **self.env},
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            text = _ANSI.sub("", self.log_path.read_text(errors="replace"))
            ports = {m.group(1): int(m.group(3)) for m in _LISTENING.finditer(text)}
            if set(PROTOCOLS) <= ports.keys():
                self.ports = ports
                return
            if self.proc.poll() is not None:
                raise PolymqError(f"polymq exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise PolymqError(f"polymq did not log its listeners within {START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit status (None if it was not running)."""
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
                raise PolymqError(f"polymq did not stop within {STOP_TIMEOUT} s of SIGTERM") from None
        return proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        text = _ANSI.sub("", self.log_path.read_text(errors="replace"))
        return "\n".join(text.splitlines()[-lines:])


class PytestPolymq(PolymqProcess):
    """For pytest fixtures: a failure to start or stop fails the test with the
    broker's log instead of raising. Its data is `workdir/data`, its logs in
    `workdir`."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        super().__init__(workdir / "data", workdir, env=env)
        self.workdir = workdir

    def start(self) -> None:
        import pytest

        try:
            super().start()
        except PolymqError as e:
            pytest.fail(str(e), pytrace=False)

    def stop(self) -> int | None:
        import pytest

        try:
            return super().stop()
        except PolymqError as e:
            pytest.fail(str(e), pytrace=False)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"
