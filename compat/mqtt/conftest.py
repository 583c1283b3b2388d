"""Fixtures of the MQTT compat suite; see README.md beside this file."""

from __future__ import annotations

from pathlib import Path

import pytest

from .brokers import polymq_binary
from .clients import VERSIONS
from .harness import MqttEnv

EXPECTED_FAILURES = Path(__file__).with_name("expected_failures.txt")
_ENV = pytest.StashKey[MqttEnv]()


@pytest.fixture(scope="session")
def target(pytestconfig) -> str:
    return pytestconfig.getoption("--target")


@pytest.fixture
def mq(request, tmp_path, target):
    env = MqttEnv(target, tmp_path)
    request.node.stash[_ENV] = env
    yield env
    problems = env.close()
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture(params=VERSIONS)
def version(request) -> str:
    return request.param


def pytest_report_header(config):
    target = config.getoption("--target")
    where = f" ({polymq_binary()})" if target == "polymq" else ""
    return f"MQTT compat target: {target}{where}"


def load_expected_failures(path: Path = EXPECTED_FAILURES) -> list[tuple[str, str, str]]:
    """(target, test id or prefix*, reason) per line of expected_failures.txt."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise pytest.UsageError(f"{path}:{number}: want `<target> <test id> <FINDINGS reference>`, got {line!r}")
        entries.append((parts[0], parts[1], parts[2]))
    return entries


def _matches(pattern: str, test_id: str) -> bool:
    return test_id.startswith(pattern[:-1]) if pattern.endswith("*") else test_id == pattern


def pytest_collection_modifyitems(config, items):
    # Known failures are marked strict xfail: the suite stays green while a
    # FINDINGS.md entry explains each one, and a fix shows up as XPASS, which
    # fails the run until its line here is removed.
    target = config.getoption("--target")
    entries = [(p, reason) for t, p, reason in load_expected_failures() if t == target]
    for item in items:
        test_id = item.nodeid.split("mqtt/", 1)[-1]
        for pattern, reason in entries:
            if _matches(pattern, test_id):
                item.add_marker(pytest.mark.xfail(reason=f"{target}: {reason}", strict=True))
                break


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    env = item.stash.get(_ENV, None)
    if env is not None and report.when == "call" and report.failed:
        for title, tail in env.log_tails():
            report.sections.append((title, tail))
    return report
