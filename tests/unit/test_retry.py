"""The one retry mechanism: full-jitter exponential backoff, bounded tries, errors passed through."""

from __future__ import annotations

import httpx
import pytest

from bonito_tasks.retry import RetryPolicy, network_errors, retry_after_s, transient_status


class Flaky(Exception):
    def __init__(self, retry_after: float | None = None):
        super().__init__("flaky")
        self.retry_after = retry_after


def run(policy: RetryPolicy, fn, **kwargs):
    """`policy.call(fn, ...)` retrying Flaky, without sleeping; returns (result or error, waits, retries logged)."""
    waits, logged = [], []
    try:
        result = policy.call(fn, retryable=lambda err: isinstance(err, Flaky), sleep=waits.append,
                             on_retry=lambda attempt, err, delay: logged.append((attempt, delay)), **kwargs)
    except Exception as err:
        result = err
    return result, waits, logged


def failing(times: int, error=Flaky):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= times:
            raise error()
        return len(calls)

    return fn, calls


def test_succeeds_after_transient_failures():
    fn, calls = failing(2)
    result, waits, logged = run(RetryPolicy(attempts=5), fn)
    assert result == 3 and len(calls) == 3
    assert [attempt for attempt, _ in logged] == [1, 2]
    assert [delay for _, delay in logged] == waits


def test_stops_after_attempts_and_raises_the_last_error():
    fn, calls = failing(100)
    result, waits, _ = run(RetryPolicy(attempts=4), fn)
    assert isinstance(result, Flaky)
    assert len(calls) == 4 and len(waits) == 3


def test_one_attempt_means_no_retry():
    fn, calls = failing(100)
    result, waits, _ = run(RetryPolicy(attempts=1), fn)
    assert isinstance(result, Flaky) and len(calls) == 1 and waits == []


def test_non_retryable_errors_fail_at_once():
    fn, calls = failing(100, error=lambda: PermissionError("403"))
    result, waits, _ = run(RetryPolicy(attempts=5), fn)
    assert isinstance(result, PermissionError) and len(calls) == 1 and waits == []


def test_delays_are_bounded_and_fully_jittered():
    policy = RetryPolicy(attempts=8, base_delay_s=1.0, max_delay_s=8.0)
    samples = [run(policy, failing(100)[0])[1] for _ in range(200)]
    for waits in samples:
        assert len(waits) == 7
        for retry, wait in enumerate(waits, start=1):
            assert 0.0 <= wait <= min(8.0, 2 ** (retry - 1))  # full jitter: anywhere in [0, window]
    firsts = [waits[0] for waits in samples]
    lasts = [waits[-1] for waits in samples]
    assert len(set(firsts)) > 150  # random, not a fixed schedule
    assert min(firsts) < 0.25 and max(lasts) > 6.0  # the window really starts at 0 and grows to the cap
    assert sum(lasts) / len(lasts) > 3 * sum(firsts) / len(firsts)


def test_retry_after_is_honoured_beyond_the_backoff_cap_up_to_its_own_bound():
    policy = RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=8.0, max_retry_after_s=300.0)
    fn = failing(100, error=lambda: Flaky(retry_after=5.0))[0]
    assert run(policy, fn, retry_after=lambda err: err.retry_after)[1] == [5.0]
    fn = failing(100, error=lambda: Flaky(retry_after=120.0))[0]  # a rate limit asking for 2 minutes gets them
    assert run(policy, fn, retry_after=lambda err: err.retry_after)[1] == [120.0]
    fn = failing(100, error=lambda: Flaky(retry_after=3600.0))[0]  # but never more than max_retry_after_s
    assert run(policy, fn, retry_after=lambda err: err.retry_after)[1] == [300.0]


def test_sleep_may_abandon_the_call():
    class Stopped(Exception):
        pass

    def sleep(_):
        raise Stopped

    fn, calls = failing(100)
    with pytest.raises(Stopped):
        RetryPolicy().call(fn, retryable=lambda err: isinstance(err, Flaky), sleep=sleep)
    assert len(calls) == 1


def test_policy_is_validated():
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="negative"):
        RetryPolicy(base_delay_s=-1)


def test_what_is_transient_over_http():
    assert [s for s in (200, 400, 401, 403, 404, 408, 409, 412, 422, 429, 500, 501, 503, 599, 600, None)
            if transient_status(s)] == [408, 429, 500, 501, 503, 599]
    errors = network_errors(httpx)
    assert isinstance(httpx.ReadTimeout("t"), errors) and isinstance(httpx.ConnectError("c"), errors)
    assert isinstance(httpx.RemoteProtocolError("r"), errors)
    assert not isinstance(httpx.DecodingError("d"), errors)


def test_retry_after_header():
    assert retry_after_s(httpx.Headers({"Retry-After": "3"})) == 3.0
    assert retry_after_s(httpx.Headers({"retry-after": "0.5"})) == 0.5
    for value in ("Wed, 21 Oct 2015 07:28:00 GMT", "-1", "nan", "inf", ""):
        assert retry_after_s(httpx.Headers({"Retry-After": value})) is None
    assert retry_after_s(httpx.Headers()) is None and retry_after_s(None) is None
