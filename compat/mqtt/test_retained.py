"""Retained messages: set, delivered on (wildcard) subscribe with RETAIN=1,
replaced, cleared by an empty retained payload; through paho and through
mosquitto_pub -r / -r -n."""


def test_retained_set_wildcard_and_clear(mq, version):
    root = mq.topic("r")
    pub = mq.paho(version, "pub")
    pub.publish(f"{root}/a", b"A\x00a", 1, retain=True)
    pub.publish(f"{root}/b/c", b"BC", 1, retain=True)
    pub.publish(f"{root}/plain", b"not retained", 1)

    many = mq.paho(version, "many")
    many.subscribe(f"{root}/#", 1)
    got = sorted(many.expect(2), key=lambda m: m.topic)
    assert [(m.topic, m.payload) for m in got] == [(f"{root}/a", b"A\x00a"), (f"{root}/b/c", b"BC")]
    assert all(m.retain for m in got), "a message sent because of a new subscription has RETAIN=1 [MQTT-3.3.1-8]"
    many.expect_none()

    one = mq.paho(version, "one")
    one.subscribe(f"{root}/+", 1)
    msg = one.expect_one()
    assert (msg.topic, msg.payload, msg.retain) == (f"{root}/a", b"A\x00a", True)
    one.expect_none()

    # An empty retained payload clears the topic, and is itself delivered to
    # current subscribers as a normal message [MQTT-3.3.1-10, MQTT-3.3.1-11].
    pub.publish(f"{root}/a", b"", 1, retain=True)
    cleared = many.expect_one()
    assert (cleared.topic, cleared.payload) == (f"{root}/a", b"")

    late = mq.paho(version, "late")
    late.subscribe(f"{root}/#", 1)
    msg = late.expect_one()
    assert (msg.topic, msg.payload, msg.retain) == (f"{root}/b/c", b"BC", True)
    late.expect_none()


def test_retained_replaced_by_newer(mq, version):
    topic = mq.topic("replace")
    pub = mq.paho(version, "pub")
    pub.publish(topic, b"one", 1, retain=True)
    pub.publish(topic, b"two", 1, retain=True)
    sub = mq.paho(version, "sub")
    sub.subscribe(topic, 1)
    msg = sub.expect_one()
    assert (msg.payload, msg.retain) == (b"two", True)
    sub.expect_none()


def test_retain_flag_cleared_on_live_delivery(mq, version):
    # To an established subscription the RETAIN flag goes out as 0 (3.1.1
    # [MQTT-3.3.1-9]; in 5.0 when Retain As Published is 0 [MQTT-3.3.1-12]).
    topic = mq.topic("live")
    sub = mq.paho(version, "sub")
    sub.subscribe(topic, 1)
    pub = mq.paho(version, "pub")
    pub.publish(topic, b"x", 1, retain=True)
    msg = sub.expect_one()
    assert msg.payload == b"x"
    assert not msg.retain


def test_retained_qos_is_min_of_stored_and_granted(mq, version):
    topic = mq.topic("rq")
    pub = mq.paho(version, "pub")
    pub.publish(topic, b"q2", 2, retain=True)
    for granted in (0, 1, 2):
        sub = mq.paho(version, f"sub{granted}")
        sub.subscribe(topic, granted)
        msg = sub.expect_one()
        assert (msg.payload, msg.retain, msg.qos) == (b"q2", True, granted)


def test_retained_with_mosquitto_clients(mq, version):
    root = mq.topic("mr")
    mq.pub(version, "-t", f"{root}/x", "-m", "kept", "-r", "-q", "1")
    mq.pub(version, "-t", f"{root}/y/z", "-m", "also", "-r", "-q", "1")
    sub = mq.sub(version, f"{root}/#", "-C", "2", "-W", "10")
    assert sub.wait_exit() == 0
    got = sorted((m["topic"], m["payload"], m["retain"]) for m in sub.messages())
    assert got == [(f"{root}/x", b"kept", True), (f"{root}/y/z", b"also", True)]

    # -r -n: a zero-length retained message clears the topic.
    mq.pub(version, "-t", f"{root}/x", "-r", "-n", "-q", "1")
    sub = mq.sub(version, f"{root}/#", "-C", "2", "-W", "3")
    assert sub.wait_exit() == 27, "mosquitto_sub -W ends with status 27 when it times out"
    assert [(m["topic"], m["payload"]) for m in sub.messages()] == [(f"{root}/y/z", b"also")]


def test_many_retained_topics_on_wildcard_subscribe(mq, version):
    root = mq.topic("fleet")
    pub = mq.paho(version, "pub")
    expected = {}
    for i in range(150):
        t = f"{root}/dev{i}/status"
        expected[t] = f"online {i}".encode()
        pub.publish(t, expected[t], 1, retain=True, wait=False)
    pub.publish(f"{root}/last", b"sync", 1)  # waits: everything before it is acknowledged
    sub = mq.paho(version, "sub")
    sub.subscribe(f"{root}/+/status", 1)
    got = {m.topic: m.payload for m in sub.expect(len(expected))}
    assert got == expected
