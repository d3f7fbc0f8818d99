"""The one poller: wait for a condition with a deadline, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, message: str = "condition",
             interval: float = 0.05) -> Any:
    """Poll until `condition()` is truthy and return its value; fail with `message` after
    `timeout` seconds. `condition` may raise AssertionError itself to fail early (a daemon that
    exited, say)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
