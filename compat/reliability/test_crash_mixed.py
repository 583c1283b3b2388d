"""A short run of crash_mixed.py in the compat suite: kill -9 under mixed
load, restart, and nothing acknowledged is lost, duplicated or reordered.
The long runs (and their results) are in RELIABILITY.md."""

import os

import crash_mixed


def test_kill_9_under_mixed_load_loses_nothing_acknowledged(capsys):
    iterations = int(os.environ.get("CRASH_ITERATIONS", "4"))
    status = crash_mixed.run(iterations, seed=1234, keep=False)
    out = capsys.readouterr().out
    print(out)
    assert status == 0, out
    assert "acked 0 found" not in out.split("crash_mixed total")[-1], "no load reached the broker:\n" + out
