"""The Celery app the compat tests run a real worker for.

Broker and result backend come from the environment (set by the test), so
the worker process and the test process use the same ones.
"""

import os
from pathlib import Path

from celery import Celery

app = Celery(
    "compat",
    broker=os.environ.get("COMPAT_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    backend=os.environ.get("COMPAT_CELERY_BACKEND") or None,
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_heartbeat=10,
)


@app.task
def add(x, y):
    return x + y


@app.task(ignore_result=True)
def touch(path, text):
    """A side effect a test can see without a result backend."""
    Path(path).write_text(text)


@app.task(bind=True, max_retries=3, default_retry_delay=0)
def flaky(self, path):
    """Fails twice, then succeeds: exercises retry (a republish by the worker)."""
    marker = Path(path)
    attempts = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(attempts + 1))
    if attempts < 2:
        raise self.retry(countdown=0)
    return attempts + 1
