"""A short run of crash_mixed.py in the compat suite: kill -9 under mixed
load, restart, and nothing acknowledged is lost, duplicated or reordered.
The long runs (and their results) are in RELIABILITY.md."""

import os
import re

import pytest

import crash_mixed

# A known, open MQTT bug (RELIABILITY.md "Known gaps", compat/mqtt/FINDINGS.md):
# now and then, right after a restart, a new persistent session gets its
# CONNACK but its SUBSCRIBE is never answered. It stops an iteration in its
# setup, before any message of it is published, so it says nothing about
# durability; it is reported as an expected failure (visible as XFAIL) instead
# of hiding it. Any loss, duplicate or reordering still fails the test.
KNOWN_SUBACK_STALL = "no SUBACK within 60 s"


def test_kill_9_under_mixed_load_loses_nothing_acknowledged(capsys):
    iterations = int(os.environ.get("CRASH_ITERATIONS", "4"))
    try:
        status = crash_mixed.run(iterations, seed=1234, keep=False)
    except RuntimeError as e:
        out = capsys.readouterr().out
        print(out)
        clean = not re.search(r"lost [1-9]|dup [1-9]|reordered [1-9]", out)
        if KNOWN_SUBACK_STALL in str(e) and clean:
            pytest.xfail(f"known MQTT SUBACK stall after a restart (open bug): {e}")
        raise
    out = capsys.readouterr().out
    print(out)
    assert status == 0, out
    assert "acked 0 found" not in out.split("crash_mixed total")[-1], "no load reached the broker:\n" + out
