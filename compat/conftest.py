"""Options shared by the compat suites."""

import os


def pytest_addoption(parser):
    parser.addoption(
        "--target",
        default=os.environ.get("COMPAT_TARGET", "polymq"),
        help="broker to test: polymq (start $POLYMQ_BIN, default target/debug/polymq), "
        "mosquitto (start the system's mosquitto), or HOST:PORT of a running broker "
        "(tests that need a specially configured broker are skipped). Env: COMPAT_TARGET.",
    )
