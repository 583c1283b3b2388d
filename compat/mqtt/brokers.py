"""Brokers under test: a fresh polymq or mosquitto process per test, or an
address someone else runs.

Both launchers take the same `BrokerConfig`, so a test states what it needs
(users, anonymous off, a small maximum packet size) once and runs against
either broker.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
# Generous: a debug polymq on a shared 2-core CI machine.
START_TIMEOUT = 30.0
# polymq drains connections for up to 5 s after SIGTERM.
STOP_TIMEOUT = 10.0

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LISTENING = re.compile(r"listening protocol=(\w+) addr=(\S+)")


@dataclass(frozen=True)
class BrokerConfig:
    """What a test needs from its broker; the default is an open broker."""

    users: tuple[tuple[str, str], ...] = ()
    allow_anonymous: bool = True
    max_packet_bytes: int | None = None
    # Keep sessions and retained messages across a restart (polymq always
    # does; mosquitto needs `persistence true`).
    persistent: bool = False

    def is_default(self) -> bool:
        return self == BrokerConfig()


class Broker:
    """A broker address, plus the process and log when we started it."""

    def __init__(self, kind: str, host: str, port: int, proc: subprocess.Popen | None = None, log_path: Path | None = None):
        self.kind = kind
        self.host = host
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.exit_status: int | None = None
        # Set by the launcher so the broker can be restarted on its own data.
        self.workdir: Path | None = None
        self.config: BrokerConfig | None = None

    def __repr__(self) -> str:
        return f"{self.kind}@{self.host}:{self.port}"

    def died(self) -> int | None:
        """The exit status if the process ended before `stop`, else None."""
        return self.proc.poll() if self.proc is not None and self.exit_status is None else None

    def log_tail(self, lines: int = 60) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = _ANSI.sub("", self.log_path.read_text(errors="replace"))
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.exit_status is not None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.exit_status = self.proc.returncode


def polymq_binary() -> Path:
    path = Path(os.environ.get("POLYMQ_BIN", "target/debug/polymq"))
    return path if path.is_absolute() else REPO_ROOT / path


def start_polymq(workdir: Path, config: BrokerConfig) -> Broker:
    binary = polymq_binary()
    if not binary.exists():
        raise RuntimeError(f"no polymq binary at {binary}: run `cargo build -p polymq-broker` or set POLYMQ_BIN")
    # The caller's POLYMQ_* settings must not leak into the broker under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLYMQ_") and k != "RUST_LOG"}
    if config.users:
        env["POLYMQ_USERS"] = ",".join(f"{name}:{password}" for name, password in config.users)
    if not config.allow_anonymous:
        env["POLYMQ_MQTT_ALLOW_ANONYMOUS"] = "false"
    if config.max_packet_bytes is not None:
        env["POLYMQ_MQTT_MAX_PACKET_BYTES"] = str(config.max_packet_bytes)
    log_path = _next_path(workdir, "polymq", ".log")
    listen = []
    for protocol in ("mqtt", "amqp", "kafka", "http"):
        listen += [f"--{protocol}-listen", "127.0.0.1:0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--data-dir", str(workdir / "data"), *listen, "--log", "info"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
        )
    broker = Broker("polymq", "127.0.0.1", 0, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        addrs = dict(_LISTENING.findall(_ANSI.sub("", log_path.read_text(errors="replace"))))
        if "mqtt" in addrs and "http" in addrs:
            break
        _check_starting(broker, deadline, "no `listening protocol=mqtt` and `protocol=http` lines")
        time.sleep(0.02)
    host, port = addrs["mqtt"].rsplit(":", 1)
    broker.host, broker.port = host, int(port)
    # Listening is logged per listener; /healthz answers 200 once all accept.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while True:
        try:
            with opener.open(f"http://{addrs['http']}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return broker
        except OSError:
            pass
        _check_starting(broker, deadline, "/healthz never answered 200")
        time.sleep(0.05)


def start_mosquitto(workdir: Path, config: BrokerConfig) -> Broker:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise RuntimeError("no mosquitto binary: apt-get install mosquitto")
    lines = [
        "allow_anonymous true" if config.allow_anonymous else "allow_anonymous false",
        "persistence false",
        "log_type all",
        # Started as root, mosquitto drops to user `mosquitto`, which cannot
        # read a password file in our 0700 temp dir; stay who we are.
        f"user {pwd.getpwuid(os.getuid()).pw_name}",
    ]
    if config.users:
        passwords = workdir / "passwords"
        for i, (name, password) in enumerate(config.users):
            create = ["-c"] if i == 0 else []
            subprocess.run(["mosquitto_passwd", *create, "-b", str(passwords), name, password], check=True, capture_output=True)
        lines.append(f"password_file {passwords}")
    if config.max_packet_bytes is not None:
        lines.append(f"max_packet_size {config.max_packet_bytes}")
    if config.persistent:
        # Saved on SIGTERM, loaded at start.
        lines[lines.index("persistence false")] = "persistence true"
        lines.append(f"persistence_location {workdir}/")
    # A free port is picked by binding port 0 and closing: another process can
    # take it before mosquitto binds, so retry a few times.
    for _ in range(5):
        port = _free_port()
        log_path = _next_path(workdir, "mosquitto", ".log")
        conf = log_path.with_suffix(".conf")
        # log_dest file flushes every line; stderr into a file is block-buffered.
        conf.write_text("\n".join([f"listener {port} 127.0.0.1", f"log_dest file {log_path}", *lines]) + "\n")
        log_path.touch()
        with open(log_path.with_suffix(".out"), "wb") as out:
            proc = subprocess.Popen([exe, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        broker = Broker("mosquitto", "127.0.0.1", port, proc, log_path)
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None and " running" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                broker.stop()
                raise RuntimeError(f"mosquitto did not start:\n{broker.log_tail()}")
            time.sleep(0.02)
        if proc.poll() is None:
            return broker
        if "Address already in use" not in log_path.read_text(errors="replace"):
            raise RuntimeError(f"mosquitto exited with {proc.returncode}:\n{broker.log_tail()}")
    raise RuntimeError("mosquitto found no free port in 5 tries")


def external_broker(address: str) -> Broker:
    host, port = address.rsplit(":", 1)
    return Broker("external", host, int(port))


def _check_starting(broker: Broker, deadline: float, what: str) -> None:
    if broker.proc is not None and broker.proc.poll() is not None:
        raise RuntimeError(f"{broker.kind} exited with {broker.proc.returncode} while starting:\n{broker.log_tail()}")
    if time.monotonic() > deadline:
        broker.stop()
        raise RuntimeError(f"{broker.kind} did not start in {START_TIMEOUT:.0f}s ({what}):\n{broker.log_tail()}")


def _next_path(workdir: Path, stem: str, suffix: str) -> Path:
    """workdir/stem-N.suffix with the first N not taken: a restarted broker
    keeps the earlier logs."""
    n = 0
    while (workdir / f"{stem}-{n}{suffix}").exists():
        n += 1
    return workdir / f"{stem}-{n}{suffix}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
