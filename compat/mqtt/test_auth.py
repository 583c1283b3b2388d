"""Username/password authentication with anonymous access off
(polymq: POLYMQ_USERS + POLYMQ_MQTT_ALLOW_ANONYMOUS=false; mosquitto:
password_file + allow_anonymous false)."""

import pytest

from .clients import V5

USERS = {"alice": "s3cret", "bob": "hunter2"}

# MQTT 3.1.1 CONNACK return codes (3.2.2.3) and MQTT 5 reason codes (3.2.2.2).
V311_BAD_USER_OR_PASSWORD, V311_NOT_AUTHORIZED = 4, 5
V5_BAD_USER_OR_PASSWORD, V5_NOT_AUTHORIZED = 0x86, 0x87


@pytest.fixture
def secured(mq):
    return mq.start_broker(users=USERS, allow_anonymous=False)


def refused(mq, secured, version, **credentials):
    client = mq.paho(version, "c", broker=secured, check=False, **credentials)
    assert client.connack is not None, f"the broker closed the connection without a CONNACK: {client.disconnects}"
    assert client.connack.code != 0, "the broker accepted the connection"
    assert not client.connack.session_present, "session present must be 0 on a refusal [MQTT-3.2.2-4]"
    return client.connack.code


def test_wrong_password_refused(mq, secured, version):
    code = refused(mq, secured, version, username="alice", password="wrong")
    if version == V5:
        assert code == V5_BAD_USER_OR_PASSWORD, f"want 0x86 Bad User Name or Password, got {code:#04x}"
    else:
        # 3.1.1 names 0x04 "bad user name or password" and 0x05 "not
        # authorized" without saying which fits a wrong password; both are common.
        assert code in (V311_BAD_USER_OR_PASSWORD, V311_NOT_AUTHORIZED), f"got {code}"


def test_unknown_user_refused(mq, secured, version):
    code = refused(mq, secured, version, username="mallory", password="s3cret")
    if version == V5:
        assert code == V5_BAD_USER_OR_PASSWORD, f"want 0x86 Bad User Name or Password, got {code:#04x}"
    else:
        assert code in (V311_BAD_USER_OR_PASSWORD, V311_NOT_AUTHORIZED), f"got {code}"


def test_anonymous_refused(mq, secured, version):
    code = refused(mq, secured, version)
    if version == V5:
        assert code in (V5_BAD_USER_OR_PASSWORD, V5_NOT_AUTHORIZED), f"got {code:#04x}"
    else:
        assert code in (V311_BAD_USER_OR_PASSWORD, V311_NOT_AUTHORIZED), f"got {code}"


def test_refused_connection_is_closed(mq, secured, version):
    client = mq.paho(version, "c", broker=secured, check=False, username="alice", password="wrong")
    assert client.connack is not None and client.connack.code != 0
    client.wait_disconnect()  # the broker closes after a failing CONNACK [MQTT-3.2.2-5]


def test_good_password_accepted(mq, secured, version):
    topic = mq.topic("authed")
    alice = mq.paho(version, "alice", broker=secured, username="alice", password="s3cret")
    alice.subscribe(topic, 1)
    bob = mq.paho(version, "bob", broker=secured, username="bob", password="hunter2")
    bob.publish(topic, b"hi alice", 1)
    assert alice.expect_one().payload == b"hi alice"


def test_mosquitto_clients_auth(mq, secured, version):
    topic = mq.topic("cli")
    bad = mq.pub(version, "-t", topic, "-m", "x", "-u", "alice", "-P", "nope", broker=secured, check=False)
    assert bad.returncode != 0, "mosquitto_pub with a wrong password must fail"
    # "Connection error: <reason>" is what mosquitto_pub prints for a refusing CONNACK.
    assert b"Connection error:" in bad.stderr, bad.stderr
    sub = mq.sub(version, topic, "-u", "alice", "-P", "s3cret", "-C", "1", "-W", "10", broker=secured)
    mq.pub(version, "-t", topic, "-m", "ok", "-u", "bob", "-P", "hunter2", "-q", "1", broker=secured)
    assert sub.wait_exit() == 0
    assert [m["payload"] for m in sub.messages()] == [b"ok"]
