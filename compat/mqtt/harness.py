"""What one test gets: its own broker(s), unique topics and client ids, and
clients that are all closed (and brokers stopped) when it ends."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from .brokers import Broker, BrokerConfig, external_broker, start_mosquitto, start_polymq
from .clients import CONNACK, MosquittoSub, PahoClient, RawConnection, connect_packet, mosquitto_pub

TARGETS = ("polymq", "mosquitto")


class MqttEnv:
    def __init__(self, target: str, workdir: Path):
        self.target = target
        self.workdir = workdir
        self.uid = uuid.uuid4().hex[:8]
        self.brokers: list[Broker] = []
        self._default: Broker | None = None
        self._clients: list[PahoClient] = []
        self._subs: list[MosquittoSub] = []
        self._raw: list[RawConnection] = []

    # --- brokers -------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        """The test's open broker (no auth, default limits), started on first use."""
        if self._default is None:
            self._default = self.start_broker()
        return self._default

    def start_broker(
        self,
        *,
        users: dict[str, str] | None = None,
        allow_anonymous: bool = True,
        max_packet_bytes: int | None = None,
        persistent: bool = False,
    ) -> Broker:
        config = BrokerConfig(tuple(sorted((users or {}).items())), allow_anonymous, max_packet_bytes, persistent)
        if self.target not in TARGETS:
            if not config.is_default():
                pytest.skip(f"needs a broker started with {config}; the target {self.target} is an address")
            broker = external_broker(self.target)
        else:
            workdir = self.workdir / f"broker{len(self.brokers)}"
            workdir.mkdir()
            broker = self._launch(workdir, config)
        self.brokers.append(broker)
        return broker

    def _launch(self, workdir: Path, config: BrokerConfig) -> Broker:
        start = start_polymq if self.target == "polymq" else start_mosquitto
        broker = start(workdir, config)
        broker.workdir, broker.config = workdir, config
        return broker

    def restart(self, broker: Broker) -> Broker:
        """Stops `broker` with SIGTERM and starts it again on the same data;
        the new one listens on a new port. Connect clients to the result."""
        assert broker.workdir is not None and broker.config is not None, f"{broker} was not started by this test"
        broker.stop()
        assert broker.exit_status == 0, f"{broker} exited with status {broker.exit_status} on SIGTERM:\n{broker.log_tail()}"
        again = self._launch(broker.workdir, broker.config)
        self.brokers.append(again)
        if self._default is broker:
            self._default = again
        return again

    # --- names -----------------------------------------------------------------
    def topic(self, *levels: str) -> str:
        """A topic under this test's own root, so tests never see each other's
        messages even on a shared (external) broker."""
        return "/".join(["compat", self.uid, *levels])

    def client_id(self, name: str) -> str:
        return f"compat-{self.uid}-{name}"

    # --- clients ---------------------------------------------------------------
    def paho(self, version: str, name: str = "c", *, broker: Broker | None = None, connect: bool = True, check: bool = True, **options) -> PahoClient:
        """A paho client with client id `client_id(name)`; connected (and the
        CONNACK checked for success) unless told otherwise."""
        client = PahoClient(broker or self.broker, version, self.client_id(name), **options)
        self._clients.append(client)
        if connect:
            connack = client.connect()
            if check:
                assert connack is not None, f"{client.client_id}: connection closed without CONNACK: {client.disconnects}"
                assert connack.code == 0, f"{client.client_id}: CONNACK refused with code {connack.code:#04x}"
        return client

    def sub(self, version: str, topics: list[str] | str, *args: str, broker: Broker | None = None, wait: bool = True, **kw) -> MosquittoSub:
        """mosquitto_sub in the background, waited until subscribed."""
        topics = [topics] if isinstance(topics, str) else topics
        sub = MosquittoSub(broker or self.broker, version, topics, list(args), **kw)
        self._subs.append(sub)
        if wait:
            sub.wait_subscribed()
        return sub

    def pub(self, version: str, *args: str, broker: Broker | None = None, input: bytes | None = None, check: bool = True):
        """mosquitto_pub to completion (it waits for the QoS handshake)."""
        done = mosquitto_pub(broker or self.broker, version, list(args), input=input)
        if check:
            assert done.returncode == 0, f"mosquitto_pub {' '.join(args)} exited {done.returncode}: {done.stderr.decode(errors='replace')}"
        return done

    def raw(self, broker: Broker | None = None, *, version: str | None = None, name: str = "raw", **connect) -> RawConnection:
        """A raw TCP connection; with `version`, CONNECTed as client_id(name)
        (options of connect_packet in `connect`) and the CONNACK checked for
        success and kept in `.connack`."""
        conn = RawConnection(broker or self.broker)
        self._raw.append(conn)
        if version is not None:
            conn.send(connect_packet(version, self.client_id(name), **connect))
            conn.connack = conn.expect(CONNACK)
            assert conn.connack.reason_code() == 0, f"CONNACK refused: {conn.connack}"
        return conn

    # --- teardown --------------------------------------------------------------
    def close(self) -> list[str]:
        """Closes everything; returns what went wrong with the brokers."""
        for client in self._clients:
            client.close()
        for sub in self._subs:
            sub.kill()
        for conn in self._raw:
            conn.close()
        problems = []
        for broker in self.brokers:
            died = broker.died()
            if died is not None:
                problems.append(f"{broker} died during the test with exit status {died}:\n{broker.log_tail()}")
                continue
            broker.stop()
            if broker.exit_status not in (None, 0):
                problems.append(f"{broker} exited with status {broker.exit_status} after SIGTERM:\n{broker.log_tail()}")
        return problems

    def log_tails(self) -> list[tuple[str, str]]:
        return [(f"{b} log", b.log_tail()) for b in self.brokers if b.log_path is not None]
