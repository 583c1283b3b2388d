"""A short run of overload.py in the compat suite: a stopped consumer under
full-rate publishing from all three protocols keeps the broker's RSS under a
bound, and everything acknowledged drains exactly once. The longer runs (and
their numbers) are in RELIABILITY.md."""

import os

import overload


def test_a_stopped_consumer_under_full_rate_publishing_stays_bounded_and_drains(capsys):
    seconds = float(os.environ.get("OVERLOAD_SECONDS", "5"))
    status = overload.run(seconds, watermark_mb=200, rss_bound_mb=300, size=512)
    out = capsys.readouterr().out
    print(out)
    assert status == 0, out
