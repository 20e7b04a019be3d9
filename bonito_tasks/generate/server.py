"""Generation on an OpenAI-compatible completions server (e.g. `vllm serve`): a drop-in for VllmEngine.

Airflow workers without GPUs send prompts to a GPU service; `run.generate_shard` parses the
texts and writes lineage exactly as it does for the in-process engine.

- Client: httpx, one pooled client used by a pool of `concurrency` threads, so at most
  `concurrency` requests are in flight and `stream()` stays a plain generator the caller
  checkpoints between. Not the `openai` SDK: `/tokenize` and per-choice `token_ids` are vLLM
  extensions outside its typed surface, and its built-in retries have fixed delays. httpx (what
  the SDK, huggingface-hub and Airflow's task SDK are built on) is already on every worker.
- Token counts: prompts through the server's `/tokenize` (the served tokenizer, BOS included as
  for a completion; the worker needs no model files). Completions through vLLM's
  `return_token_ids`, so `n_tokens` is exact per choice (EOS included, as in-process); a server
  without that extension gets `usage.completion_tokens` split evenly over the n choices.
- No per-request `seed`: vLLM's CPU build rejects it. Start the server with `--seed`.
- Retries (bonito_tasks.retry): 408, 429, 5xx, timeouts and connection errors, with full-jitter
  exponential backoff (a numeric Retry-After is honoured up to the cap). Any other 4xx fails at once
  (kind "rejected"); a request out of attempts fails with kind "engine_died". A retry after a
  timeout may leave the abandoned request running on the server; only the retry's answer is used.
- The API key travels only in the Authorization header and is masked in every message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TYPE_CHECKING

from bonito_tasks.config import RunConfig
from bonito_tasks.generate.engine import FLUSH_EVERY_S, Completion, EngineFailure, EngineRejected
from bonito_tasks.retry import RetryPolicy, network_errors, retry_after_s, transient_status

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

SERVER_RETRY = RetryPolicy(timeout_s=600.0)  # a completion may queue behind others on the server


class _Transient(Exception):
    """An answer worth retrying (408, 429, 5xx): `problem` for the log, the server's Retry-After."""

    def __init__(self, problem: str, retry_after: float | None):
        super().__init__(problem)
        self.problem, self.retry_after = problem, retry_after


class _Stopped(Exception):
    """The request was abandoned while it waited to retry (another request failed, or the caller stopped)."""


class OpenAICompletionsEngine:
    """Completions from a server at `base_url` (e.g. http://gpu-host:8000; a trailing /v1 is
    accepted). Use as a context manager so the connection pool is always released."""

    def __init__(self, config: RunConfig, base_url: str, api_key: str | None = None, concurrency: int = 16,
                 retry: RetryPolicy = SERVER_RETRY, served_model_name: str | None = None):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.config = config
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.model = served_model_name or config.model_id
        self.concurrency = concurrency
        self.retry = retry
        self._api_key = api_key
        self._client: httpx.Client | None = None  # open between load() and unload()
        self._pool: ThreadPoolExecutor | None = None

    def load(self) -> OpenAICompletionsEngine:
        """Open the connection pool and check that the server serves the model with a long enough context."""
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(self.retry.timeout_s, connect=self.retry.connect_timeout_s),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="completions")
        try:
            models = self._request("GET", "/v1/models")
            assert models is not None  # None only when a stop event is set: there is none here
            cards = {card["id"]: card for card in models["data"]}
            if self.model not in cards:
                raise self._failure(
                    f"the server at {self.base_url} does not serve model '{self.model}'; it serves {sorted(cards)}. "
                    "Set the served model name (or model_id) to one of them.", "rejected")
            served_len = cards[self.model].get("max_model_len")
            if served_len is not None and served_len < self.config.max_model_len:
                raise self._failure(
                    f"the server at {self.base_url} serves '{self.model}' with max_model_len {served_len}, "
                    f"below the run's max_model_len {self.config.max_model_len}: lower the run's max_model_len "
                    f"or restart the server with --max-model-len {self.config.max_model_len}.", "rejected")
        except BaseException:
            self.unload()
            raise
        log.info("completions server %s: model %s (max_model_len %s), %d requests in flight at most",
                 self.base_url, self.model, served_len, self.concurrency)
        return self

    def prompt_tokens(self, prompts: list[str]) -> list[int]:
        bodies = {i: {"model": self.model, "prompt": p} for i, p in enumerate(prompts)}
        counts = dict(self._as_completed("/tokenize", bodies))
        return [counts[i]["count"] for i in range(len(prompts))]

    def stream(self, prompts: dict[int, str], sampling_params: dict, flush_every: int
               ) -> Iterator[list[tuple[int, list[Completion]]]]:
        """Completions as requests finish, in lists of about `flush_every` prompts (see VllmEngine.stream).
        On a failure the prompts that did finish are handed back first, then EngineFailure is raised."""
        n = sampling_params.get("n", 1)
        bodies = {i: {"model": self.model, "prompt": p, **sampling_params, "return_token_ids": True}
                  for i, p in prompts.items()}
        results = self._as_completed("/v1/completions", bodies)
        finished: list[tuple[int, list[Completion]]] = []
        flushed = time.monotonic()
        try:
            for index, response in results:
                finished.append((index, self._completions(response, n)))
                if len(finished) >= flush_every or time.monotonic() - flushed >= FLUSH_EVERY_S:
                    yield finished
                    finished, flushed = [], time.monotonic()
        except EngineFailure:
            if finished:
                yield finished
            raise
        finally:
            results.close()  # stopped early or failed: cancel what is queued
        if finished:
            yield finished

    def unload(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> OpenAICompletionsEngine:
        return self.load()

    def __exit__(self, *exc) -> None:
        self.unload()

    def _as_completed(self, path: str, bodies: dict[int, dict]) -> Generator[tuple[int, dict], None, None]:
        """POST every body through the pool; (key, response JSON) as each finishes. The first
        failure, or the caller stopping early, stops what is queued and what waits to retry."""
        stop = threading.Event()

        def call(body: dict) -> dict | None:
            if stop.is_set():
                return None
            try:
                return self._request("POST", path, body, stop)
            except BaseException:
                stop.set()
                raise

        pool = self._pool
        assert pool is not None, "load() first"
        futures = {pool.submit(call, body): key for key, body in bodies.items()}
        try:
            for future in as_completed(futures):
                if (response := future.result()) is not None:  # None: abandoned after a failure
                    yield futures[future], response
        finally:
            stop.set()
            for future in futures:
                future.cancel()

    def _request(self, method: str, path: str, body: dict | None = None, stop: threading.Event | None = None
                 ) -> dict | None:
        """The response JSON, or None when `stop` is set while waiting to retry."""
        import httpx

        url = f"{self.base_url}{path}"
        retryable: tuple[type[BaseException], ...] = (_Transient, *network_errors(httpx))
        client = self._client
        assert client is not None, "load() first"

        def send() -> dict:
            response = client.request(method, path, json=body)
            if response.is_success:
                try:
                    return response.json()
                except ValueError:
                    raise self._failure(f"{method} {url} answered {response.status_code} without JSON "
                                        f"({response.text[:200]!r}): is {self.base_url} an OpenAI-compatible "
                                        "server?", "rejected") from None
            problem = f"HTTP {response.status_code}: {_error_text(response)}"
            if not transient_status(response.status_code):
                raise self._failure(
                    f"{method} {url} was rejected ({problem}). Check the server URL, the API key and the "
                    f"served model name ('{self.model}'); retrying cannot help.", "rejected")
            raise _Transient(problem, retry_after_s(response.headers))

        def wait(delay: float) -> None:
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise _Stopped

        def log_retry(attempt: int, err: BaseException, delay: float) -> None:
            log.warning("%s", self._mask(f"{method} {url} failed ({_problem(err)}); retry {attempt}/"
                                         f"{self.retry.attempts - 1} in {delay:.1f}s"))

        try:
            return self.retry.call(
                send, retryable=lambda err: isinstance(err, retryable),
                retry_after=lambda err: getattr(err, "retry_after", None), on_retry=log_retry, sleep=wait)
        except _Stopped:
            return None
        except retryable as err:
            raise self._failure(
                f"{method} {url} failed after {self.retry.attempts} attempt(s); last error: {_problem(err)}. Check "
                f"that the server is up ({self.base_url}/health) and not overloaded (lower the concurrency, now "
                f"{self.concurrency}); the retry resumes after the last checkpoint.", "engine_died") from None

    def _completions(self, response: dict, n: int) -> list[Completion]:
        choices = sorted(response["choices"], key=lambda c: c["index"])
        if len(choices) != n:
            raise self._failure(f"the server at {self.base_url} returned {len(choices)} choices for n={n}; "
                                "it must support n (vLLM does).", "rejected")
        total = (response.get("usage") or {}).get("completion_tokens", 0)
        share, extra = divmod(total, n)
        return [Completion(c["text"], len(c["token_ids"]) if c.get("token_ids") is not None else share + (i < extra))
                for i, c in enumerate(choices)]

    def _failure(self, message: str, kind: str) -> EngineFailure:
        return EngineRejected(self._mask(message)) if kind == "rejected" else EngineFailure(self._mask(message), kind)

    def _mask(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _problem(err: BaseException) -> str:
    return err.problem if isinstance(err, _Transient) else f"{type(err).__name__}: {err}"


def _error_text(response) -> str:
    """The server's error message (OpenAI error shape) or the start of the body."""
    try:
        error = response.json().get("error")
        text = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        text = None
    return str(text or response.text or response.reason_phrase)[:500]
