"""A real Celery worker executing tasks through polymq."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
WAIT = 30.0


class Worker:
    def __init__(self, polymq, tmp_path: Path, backend: str | None):
        self.env = {**os.environ, "COMPAT_CELERY_BROKER": polymq.url, "COMPAT_CELERY_BACKEND": backend or "",
                    "PYTHONPATH": str(HERE)}
        self.log_path = tmp_path / "celery-worker.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "compat_celery_app", "worker", "--pool=solo", "--concurrency=1",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=INFO", "-n", "compat@%h"],
            cwd=HERE, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if "ready." in self.log():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"celery worker exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            time.sleep(0.1)
        pytest.fail(f"celery worker not ready within {WAIT} s:\n{self.log()}", pytrace=False)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def celery_env(polymq, tmp_path, monkeypatch):
    def start(backend: str | None):
        monkeypatch.setenv("COMPAT_CELERY_BROKER", polymq.url)
        monkeypatch.setenv("COMPAT_CELERY_BACKEND", backend or "")
        monkeypatch.syspath_prepend(str(HERE))
        sys.modules.pop("compat_celery_app", None)
        import compat_celery_app

        worker = Worker(polymq, tmp_path, backend)
        workers.append(worker)
        worker.wait_ready()
        return compat_celery_app, worker

    workers: list[Worker] = []
    yield start
    for worker in workers:
        worker.stop()
    sys.modules.pop("compat_celery_app", None)


def wait_for_file(path: Path, worker: Worker) -> str:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.1)
    pytest.fail(f"{path} not written within {WAIT} s; worker log:\n{worker.log()}", pytrace=False)


def test_celery_task_with_rpc_result_backend(celery_env):
    app_module, worker = celery_env("rpc://")
    try:
        results = [app_module.add.delay(i, 3) for i in range(5)]
        assert [r.get(timeout=WAIT) for r in results] == [i + 3 for i in range(5)]
    finally:
        app_module.app.close()


def test_celery_fire_and_forget_task_side_effect(celery_env, tmp_path):
    app_module, worker = celery_env(None)
    try:
        target = tmp_path / "touched"
        app_module.touch.delay(str(target), "hello from celery")
        assert wait_for_file(target, worker) == "hello from celery"
    finally:
        app_module.app.close()


def test_celery_retry_republishes_the_task(celery_env, tmp_path):
    app_module, worker = celery_env("rpc://")
    try:
        marker = tmp_path / "attempts"
        assert app_module.flaky.delay(str(marker)).get(timeout=WAIT) == 3
    finally:
        app_module.app.close()
