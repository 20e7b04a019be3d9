"""One retry mechanism for calls over the network (the completions server, the Hugging Face Hub).

`RetryPolicy.call` runs a call with tenacity: up to `attempts` tries while the error is one the
caller calls transient, with full-jitter exponential backoff between them (before retry k, a wait
drawn uniformly from [0, min(max_delay_s, base_delay_s * 2**(k-1))]). A server's Retry-After is
honoured as a minimum wait up to its own, larger bound `max_retry_after_s`: a rate limit that asks
for two minutes gets them instead of five quick tries that all fail. Any other error, and the
last one when the tries run out, is raised unchanged, so each caller words its own failure.

The helpers below say what is transient over HTTP, the same for every caller: 408, 429 and any
5xx; timeouts, dropped connections and broken responses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({408, 429})  # and every 5xx


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries per call, the first included
    base_delay_s: float = 1.0  # the backoff window before the first retry; it doubles each retry
    max_delay_s: float = 30.0  # the backoff's cap
    max_retry_after_s: float = 600.0  # the longest Retry-After honoured (longer: this wait, then retry)
    timeout_s: float = 120.0  # per request: longest wait to connect, or for the next bytes of a read or write
    connect_timeout_s: float = 10.0  # for clients that bound the connect apart (the completions server)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if min(self.base_delay_s, self.max_delay_s, self.max_retry_after_s, self.timeout_s,
               self.connect_timeout_s) < 0:
            raise ValueError(f"delays and timeouts must not be negative: {self}")

    def call(
        self,
        fn: Callable[[], T],
        *,
        retryable: Callable[[BaseException], bool],
        retry_after: Callable[[BaseException], float | None] = lambda err: None,
        on_retry: Callable[[int, BaseException, float], None] = lambda attempt, err, delay: None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """`fn()`, tried again while it raises an error `retryable` accepts and tries are left.

        `retry_after(err)` is the server's minimum wait in seconds (None: no hint); `on_retry(attempt,
        err, delay)` is called before each wait (to log it); `sleep(delay)` waits, and may raise to
        abandon the call (that error propagates as is)."""
        import tenacity

        backoff = tenacity.wait_random_exponential(multiplier=self.base_delay_s, max=self.max_delay_s)

        def failure(state: tenacity.RetryCallState) -> BaseException:
            # Tenacity waits only after an attempt that raised (retry_if_exception): its outcome holds the error.
            assert state.outcome is not None
            err = state.outcome.exception()
            assert err is not None
            return err

        def wait(state: tenacity.RetryCallState) -> float:
            hint = retry_after(failure(state))
            return max(backoff(state), min(hint or 0.0, self.max_retry_after_s))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            assert state.next_action is not None  # set before before_sleep is called
            on_retry(state.attempt_number, failure(state), state.next_action.sleep)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.attempts),
            wait=wait,
            retry=tenacity.retry_if_exception(retryable),
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )
        return retrying(fn)


def transient_status(status: int | None) -> bool:
    """Whether an HTTP status is worth retrying: 408, 429 or any 5xx."""
    return status is not None and (status in TRANSIENT_STATUSES or 500 <= status < 600)


def network_errors(httpx_module: Any) -> tuple[type[BaseException], ...]:
    """The transport errors worth retrying, from httpx or a fork with its API (huggingface_hub's httpx2)."""
    return httpx_module.TimeoutException, httpx_module.NetworkError, httpx_module.RemoteProtocolError


def retry_after_s(headers: Mapping[str, str] | None) -> float | None:
    """A response's Retry-After in seconds when it is a number (the HTTP-date form is ignored)."""
    try:
        value = float((headers or {}).get("retry-after") or "")
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None
