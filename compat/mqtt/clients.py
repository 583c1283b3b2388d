"""Clients the tests drive: paho-mqtt (callback API v2) on a background loop,
the mosquitto_pub / mosquitto_sub command-line tools, and a raw socket for the
few checks where a client library would hide the packets we need to see.

Every wait is bounded: TIMEOUT for something that must happen, QUIET for how
long we watch for something that must not.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from .brokers import Broker

TIMEOUT = float(os.environ.get("COMPAT_TIMEOUT", "10"))
QUIET = float(os.environ.get("COMPAT_QUIET", "1.5"))

V31 = "v31"
V311 = "v311"
V5 = "v5"
# What most tests run under; MQTT 3.1 ("MQIsdp") has a test of its own.
VERSIONS = (V311, V5)
# The -V argument of mosquitto_pub / mosquitto_sub.
MOSQUITTO_V = {V31: "mqttv31", V311: "mqttv311", V5: "mqttv5"}
_PAHO_PROTOCOL = {V31: paho.MQTTv31, V311: paho.MQTTv311, V5: paho.MQTTv5}

# paho's v2 callbacks hand MQTT 3.1.1 CONNACK return codes over as MQTT 5
# reason codes; this maps them back so a test can name the 3.1.1 code.
_V311_CONNACK = {0: 0, 132: 1, 133: 2, 136: 3, 134: 4, 135: 5}


def props(packet_type: int, **values: Any) -> Properties:
    """MQTT 5 properties, e.g. props(PacketTypes.PUBLISH, ContentType="x")."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def prop(properties: Properties | None, name: str, default: Any = None) -> Any:
    return getattr(properties, name, default) if properties is not None else default


@dataclass
class Connack:
    # The 3.1.1 return code or the MQTT 5 reason code, as on the wire.
    code: int
    session_present: bool
    properties: Properties | None


@dataclass
class Disconnect:
    code: int
    # True when the broker sent a DISCONNECT packet (MQTT 5), False when the
    # connection just closed.
    from_server: bool
    properties: Properties | None


@dataclass
class Msg:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: Properties | None

    def prop(self, name: str, default: Any = None) -> Any:
        return prop(self.properties, name, default)

    def __repr__(self) -> str:
        payload = self.payload if len(self.payload) <= 40 else self.payload[:40] + b"..."
        return f"Msg({self.topic!r}, {payload!r}, qos={self.qos}, retain={self.retain}, dup={self.dup})"


class PahoClient:
    """One paho connection. Received packets are recorded by the loop thread;
    the test thread waits on them with bounded waits."""

    def __init__(
        self,
        broker: Broker,
        version: str,
        client_id: str,
        *,
        clean: bool = True,
        session_expiry: int | None = None,
        username: str | None = None,
        password: str | None = None,
        will: dict | None = None,
        keepalive: int = 60,
        connect_properties: dict | None = None,
    ):
        assert version in _PAHO_PROTOCOL, version
        self.broker = broker
        self.version = version
        self.client_id = client_id
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.connect_properties = connect_properties or {}
        kwargs: dict[str, Any] = dict(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=_PAHO_PROTOCOL[version],
            # A test decides when to reconnect; paho must not do it behind us.
            reconnect_on_failure=False,
        )
        if version != V5:
            kwargs["clean_session"] = clean
        self.paho = paho.Client(**kwargs)
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            will = dict(will)
            if "properties" in will:
                will["properties"] = props(PacketTypes.WILLMESSAGE, **will["properties"])
            self.paho.will_set(**will)
        self._cv = threading.Condition()
        self.connacks: list[Connack] = []
        self.disconnects: list[Disconnect] = []
        self.messages: list[Msg] = []
        self._taken = 0
        self._subacks: dict[int, list[int]] = {}
        self._unsubacks: dict[int, list[int]] = {}
        self._published: dict[int, int | None] = {}
        self.killed = False
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_unsubscribe = self._on_unsubscribe
        self.paho.on_publish = self._on_publish

    # --- callbacks (loop thread) -------------------------------------------
    def _record(self, fn: Callable[[], None]) -> None:
        with self._cv:
            fn()
            self._cv.notify_all()

    def _on_connect(self, _c, _u, flags, reason_code, properties):
        code = reason_code.value if self.version == V5 else _V311_CONNACK.get(reason_code.value, reason_code.value)
        self._record(lambda: self.connacks.append(Connack(code, bool(flags.session_present), properties)))

    def _on_disconnect(self, _c, _u, flags, reason_code, properties):
        d = Disconnect(reason_code.value, bool(flags.is_disconnect_packet_from_server), properties)
        self._record(lambda: self.disconnects.append(d))

    def _on_message(self, _c, _u, m):
        msg = Msg(m.topic, bytes(m.payload), m.qos, bool(m.retain), bool(m.dup), getattr(m, "properties", None))
        self._record(lambda: self.messages.append(msg))

    def _on_subscribe(self, _c, _u, mid, reason_codes, _props):
        self._record(lambda: self._subacks.__setitem__(mid, [rc.value for rc in reason_codes]))

    def _on_unsubscribe(self, _c, _u, mid, reason_codes, _props):
        self._record(lambda: self._unsubacks.__setitem__(mid, [rc.value for rc in reason_codes]))

    def _on_publish(self, _c, _u, mid, reason_code, _props):
        self._record(lambda: self._published.__setitem__(mid, reason_code.value if reason_code is not None else None))

    # --- waiting ------------------------------------------------------------
    def _wait(self, ready: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                value = ready()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.client_id}: {what} within {timeout:.1f}s; {self._state()}")
                self._cv.wait(left)

    def _state(self) -> str:
        return f"connacks={self.connacks} disconnects={self.disconnects} messages={self.messages}"

    # --- actions ------------------------------------------------------------
    def connect(self, timeout: float = TIMEOUT) -> Connack | None:
        """Sends CONNECT and waits for CONNACK. None when the broker closed the
        connection without one."""
        if self.version == V5:
            values = dict(self.connect_properties)
            if self.session_expiry is not None:
                values["SessionExpiryInterval"] = self.session_expiry
            connect_props = props(PacketTypes.CONNECT, **values) if values else None
            self.paho.connect(self.broker.host, self.broker.port, self.keepalive, clean_start=self.clean, properties=connect_props)
        else:
            self.paho.connect(self.broker.host, self.broker.port, self.keepalive)
        self.paho.loop_start()
        self._wait(lambda: self.connacks or self.disconnects, timeout, "no CONNACK and no close")
        with self._cv:
            return self.connacks[0] if self.connacks else None

    @property
    def connack(self) -> Connack | None:
        with self._cv:
            return self.connacks[0] if self.connacks else None

    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_id: int | None = None,
        timeout: float = TIMEOUT,
    ) -> list[int]:
        """Subscribes and waits for SUBACK; returns its reason codes (granted QoS)."""
        if self.version == V5:
            options = SubscribeOptions(
                qos=qos, noLocal=no_local, retainAsPublished=retain_as_published, retainHandling=retain_handling
            )
            sub_props = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=subscription_id) if subscription_id else None
            rc, mid = self.paho.subscribe(topic, options=options, properties=sub_props)
        else:
            rc, mid = self.paho.subscribe(topic, qos)
        assert rc == paho.MQTT_ERR_SUCCESS, f"subscribe({topic!r}) not sent: {paho.error_string(rc)}"
        self._wait(lambda: mid in self._subacks, timeout, f"no SUBACK for {topic!r}")
        with self._cv:
            return self._subacks[mid]

    def unsubscribe(self, topic: str, timeout: float = TIMEOUT) -> list[int]:
        rc, mid = self.paho.unsubscribe(topic)
        assert rc == paho.MQTT_ERR_SUCCESS, f"unsubscribe({topic!r}) not sent: {paho.error_string(rc)}"
        self._wait(lambda: mid in self._unsubacks, timeout, f"no UNSUBACK for {topic!r}")
        with self._cv:
            return self._unsubacks[mid]

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        properties: dict | None = None,
        *,
        wait: bool = True,
        timeout: float = TIMEOUT,
    ) -> int | None:
        """Publishes; with `wait`, until the QoS handshake completes (PUBACK, or
        PUBREC..PUBCOMP). Returns the MQTT 5 reason code of the ack, if any."""
        publish_props = props(PacketTypes.PUBLISH, **properties) if properties else None
        info = self.paho.publish(topic, payload, qos, retain, publish_props)
        assert info.rc == paho.MQTT_ERR_SUCCESS, f"publish to {topic!r} not sent: {paho.error_string(info.rc)}"
        if not wait:
            return None
        what = "publish not written" if qos == 0 else f"QoS {qos} handshake not completed (no {'PUBACK' if qos == 1 else 'PUBCOMP'})"
        self._wait(lambda: info.mid in self._published, timeout, what)
        with self._cv:
            return self._published[info.mid]

    def expect(self, count: int, timeout: float = TIMEOUT) -> list[Msg]:
        """The next `count` messages received (in order of arrival)."""
        self._wait(lambda: len(self.messages) - self._taken >= count, timeout, f"fewer than {count} new messages")
        with self._cv:
            got = self.messages[self._taken : self._taken + count]
            self._taken += count
            return got

    def expect_one(self, timeout: float = TIMEOUT) -> Msg:
        return self.expect(1, timeout)[0]

    def expect_none(self, quiet: float = QUIET) -> None:
        time.sleep(quiet)
        with self._cv:
            extra = self.messages[self._taken :]
        assert not extra, f"{self.client_id}: unexpected messages {extra}"

    def take_all(self) -> list[Msg]:
        with self._cv:
            got = self.messages[self._taken :]
            self._taken = len(self.messages)
            return got

    def wait_disconnect(self, timeout: float = TIMEOUT) -> Disconnect:
        self._wait(lambda: self.disconnects, timeout, "still connected")
        with self._cv:
            return self.disconnects[0]

    def disconnect(self, timeout: float = TIMEOUT) -> None:
        """A normal DISCONNECT (reason 0: the will is discarded)."""
        self.paho.disconnect()
        self._wait(lambda: self.disconnects, timeout, "DISCONNECT not completed")
        self.paho.loop_stop()

    def kill(self) -> None:
        """Drops the TCP connection without DISCONNECT, as a crashed client or a
        lost network would: the broker must treat it as abnormal (will)."""
        sock = self.paho.socket()
        self.paho.loop_stop()
        self.killed = True
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        """Teardown: best effort, never raises."""
        try:
            if not self.killed and self.connacks and not self.disconnects:
                self.paho.disconnect()
                deadline = time.monotonic() + 2
                while not self.disconnects and time.monotonic() < deadline:
                    time.sleep(0.01)
            self.paho.loop_stop()
        except Exception:
            pass
        sock = self.paho.socket()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass


# --- mosquitto_sub / mosquitto_pub ---------------------------------------

# One line per message; the payload in hex so binary payloads compare exactly.
SUB_FORMAT = "MSG|%t|%q|%r|%x"


def parse_sub_line(line: str) -> dict | None:
    if not line.startswith("MSG|"):
        return None
    _, topic, qos, retain, hex_payload = line.split("|", 4)
    return {"topic": topic, "qos": int(qos), "retain": retain == "1", "payload": bytes.fromhex(hex_payload)}


class MosquittoSub:
    """mosquitto_sub in the background, run with -d so we can see the SUBACK
    before anything is published, and -F SUB_FORMAT for the messages."""

    def __init__(self, broker: Broker, version: str, topics: list[str], args: list[str], fmt: str = SUB_FORMAT):
        # mosquitto_sub does not flush its debug lines: without line buffering
        # the SUBACK line would sit in the pipe until it exits.
        line_buffered = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
        self.cmd = [
            *line_buffered,
            "mosquitto_sub",
            "-h",
            broker.host,
            "-p",
            str(broker.port),
            "-V",
            MOSQUITTO_V[version],
            "-d",
            "-F",
            fmt,
            *[a for t in topics for a in ("-t", t)],
            *args,
        ]
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.stderr = ""
        self._cv = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cv:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        data = self.proc.stderr.read()
        self.stderr = data.decode(errors="replace")

    def _describe(self) -> str:
        return f"{' '.join(self.cmd)}: exit={self.proc.poll()} stdout={self.lines} stderr={self.stderr!r}"

    def wait_subscribed(self, timeout: float = TIMEOUT) -> list[str]:
        """Waits for mosquitto_sub's 'Subscribed (mid: N): <codes>' line."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                done = [line for line in self.lines if line.startswith("Subscribed (mid")]
                if done:
                    return done
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"mosquitto_sub ended before SUBACK: {self._describe()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no SUBACK within {timeout:.1f}s: {self._describe()}")
                self._cv.wait(min(left, 0.1))

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"mosquitto_sub still running after {timeout:.1f}s: {self._describe()}") from None
        self._reader.join(5)
        self._err_reader.join(5)
        return self.proc.returncode

    def messages(self) -> list[dict]:
        with self._cv:
            return [m for m in map(parse_sub_line, self.lines) if m is not None]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def mosquitto_pub(broker: Broker, version: str, args: list[str], input: bytes | None = None) -> subprocess.CompletedProcess:
    cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V", MOSQUITTO_V[version], *args]
    return subprocess.run(cmd, input=input, capture_output=True, timeout=TIMEOUT + 5)


# --- raw MQTT packets ----------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
PACKET_NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE",
    9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def mqtt_string(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(data)) + data


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect_packet(
    version: str,
    client_id: str,
    *,
    keepalive: int = 60,
    clean: bool = True,
    will: tuple[str, bytes, int] | None = None,
    session_expiry: int | None = None,
    properties: bytes = b"",
) -> bytes:
    level = 5 if version == V5 else 4
    flags = (0x02 if clean else 0) | ((0x04 | will[2] << 3) if will else 0)
    body = mqtt_string("MQTT") + bytes([level, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        if session_expiry is not None:
            properties += prop_u32(SESSION_EXPIRY_INTERVAL, session_expiry)
        body += varint(len(properties)) + properties
    body += mqtt_string(client_id)
    if will:
        if version == V5:
            body += varint(0)  # no will properties
        body += mqtt_string(will[0]) + mqtt_string(will[1])
    return packet(CONNECT, 0, body)


def publish_packet(
    version: str, topic: str, payload: bytes, qos: int = 0, packet_id: int = 1, dup: bool = False, properties: bytes = b""
) -> bytes:
    body = mqtt_string(topic)
    if qos:
        body += struct.pack("!H", packet_id)
    if version == V5:
        body += varint(len(properties)) + properties
    return packet(PUBLISH, (0x08 if dup else 0) | qos << 1, body + payload)


def ack_packet(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP with reason Success (omitted)."""
    return packet(kind, 0x02 if kind == PUBREL else 0, struct.pack("!H", packet_id))


# MQTT 5 property identifiers used by the raw tests.
SESSION_EXPIRY_INTERVAL, RECEIVE_MAXIMUM, TOPIC_ALIAS = 0x11, 0x21, 0x23


def prop_u16(identifier: int, value: int) -> bytes:
    return bytes([identifier]) + struct.pack("!H", value)


def prop_u32(identifier: int, value: int) -> bytes:
    return bytes([identifier]) + struct.pack("!I", value)


def subscribe_packet(version: str, topic: str, qos: int, packet_id: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + (varint(0) if version == V5 else b"") + mqtt_string(topic) + bytes([qos])
    return packet(SUBSCRIBE, 0x02, body)


@dataclass
class Packet:
    kind: int
    flags: int
    body: bytes

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.kind, f"type {self.kind}")

    def __repr__(self) -> str:
        body = self.body if len(self.body) <= 40 else self.body[:40] + b"..."
        return f"{self.name}(flags=0x{self.flags:x}, body={body!r})"

    def packet_id(self) -> int:
        """Packet identifier of a PUBACK / PUBREC / PUBREL / PUBCOMP / SUBACK."""
        return struct.unpack_from("!H", self.body)[0]

    def suback_codes(self, version: str) -> list[int]:
        """Reason codes (granted QoS) of a SUBACK or UNSUBACK."""
        pos = 2
        if version == V5:
            length, pos = _read_varint(self.body, pos)
            pos += length
        return list(self.body[pos:])

    def connack_properties(self) -> Properties:
        """MQTT 5 CONNACK properties."""
        properties = Properties(PacketTypes.CONNACK)
        properties.unpack(self.body[2:])
        return properties

    def reason_code(self) -> int:
        """DISCONNECT / CONNACK reason code; an empty DISCONNECT body means 0."""
        if self.kind == CONNACK:
            return self.body[1]
        return self.body[0] if self.body else 0

    def publish_fields(self, version: str) -> tuple[str, int | None, bytes]:
        """(topic, packet id, payload) of a PUBLISH."""
        (n,) = struct.unpack_from("!H", self.body)
        topic, pos = self.body[2 : 2 + n].decode(), 2 + n
        packet_id = None
        if (self.flags >> 1) & 3:
            (packet_id,) = struct.unpack_from("!H", self.body, pos)
            pos += 2
        if version == V5:
            length, pos = _read_varint(self.body, pos)
            pos += length
        return topic, packet_id, self.body[pos:]


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


class RawConnection:
    """A TCP connection that sends and reads whole MQTT packets."""

    def __init__(self, broker: Broker):
        self.sock = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT)
        self._buf = b""
        self.connack: Packet | None = None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_packet(self, timeout: float = TIMEOUT) -> Packet | None:
        """The next packet; None on EOF or connection reset. Raises
        socket.timeout when nothing arrives within `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self._buf) >= 2:
                try:
                    length, pos = _read_varint(self._buf, 1)
                except IndexError:
                    length, pos = -1, 0
                if length >= 0 and len(self._buf) >= pos + length:
                    first, body = self._buf[0], self._buf[pos : pos + length]
                    self._buf = self._buf[pos + length :]
                    return Packet(first >> 4, first & 0x0F, body)
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout(f"no whole packet within {timeout:.1f}s (have {self._buf!r})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            self._buf += chunk

    def expect(self, kind: int, what: str = "") -> Packet:
        """The next packet, which must be of `kind`."""
        got = self.read_packet()
        want = what or PACKET_NAMES.get(kind, str(kind))
        assert got is not None and got.kind == kind, f"want {want}, got {got if got else 'the connection closed'}"
        return got

    def expect_silence(self, quiet: float = QUIET) -> None:
        try:
            got = self.read_packet(timeout=quiet)
        except socket.timeout:
            return
        raise AssertionError(f"want nothing, got {got if got else 'the connection closed'}")

    def close(self) -> None:
        self.sock.close()
