"""Generate through a real `vllm serve` of the tiny Bonito model, with a fault-injecting proxy in front."""

import http.client
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bonito_tasks.contracts import RunRef
from bonito_tasks.generate.engine import EngineFailure, model_revision
from bonito_tasks.generate.run import ENGINE_FAILURES, generate_shard
from bonito_tasks.generate.server import OpenAICompletionsEngine
from bonito_tasks.retry import RetryPolicy
from bonito_tasks.stage import StageWriter
from bonito_tasks.store import LocalStore
from conftest import TINY_MODEL, make_config, paragraph_chunks

pytestmark = pytest.mark.vllm
RUN = RunRef(dag_id="d", run_id="r1")
API_KEY = "sk-test-3f9a1c77e2"
FAST = RetryPolicy(attempts=4, base_delay_s=0.05, max_delay_s=0.2, timeout_s=5)
TASK_TYPES = ["exqa", "ynqa", "summarization"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`vllm serve` on loopback, guarded by an API key; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(TINY_MODEL),
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--dtype", "float32",
           "--seed", "0", "--api-key", API_KEY]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # ~30 s alone; much longer on a loaded 2-core machine
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not come up:\n{log_path.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the API server and its engine-core child
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class FaultProxy(ThreadingHTTPServer):
    """Forwards to the server. Each /v1/completions request takes the next action from `faults`
    ("429", "503", other statuses, "stall": hold until the client gives up, "drop": close without
    an answer, None: forward), then `default` once they run out. Records what it did."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, upstream: str, faults=(), default=None):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream.removeprefix("http://")
        self.faults, self.default = list(faults), default
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []  # (path, action)
        self.in_flight = self.max_in_flight = 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def actions(self, path: str) -> list[str]:
        return [action for p, action in self.seen if p == path]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self._handle()

    def do_POST(self):
        self._handle()

    def log_message(self, *args):
        pass

    def _handle(self):
        proxy: FaultProxy = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with proxy.lock:
            action = None
            if self.path == "/v1/completions":
                action = proxy.faults.pop(0) if proxy.faults else proxy.default
            proxy.seen.append((self.path, action or "forwarded"))
            proxy.in_flight += 1
            proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
        try:
            if action in ("stall", "drop"):
                if action == "stall":
                    select.select([self.connection], [], [], 60)  # readable once the client hangs up
                self.close_connection = True
                return
            if action:
                error = json.dumps({"error": {"message": f"injected {action}"}}).encode()
                return self._reply(int(action), error, {"Retry-After": "0"} if action == "429" else {})
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
            upstream.request(self.command, self.path, body, headers)
            response = upstream.getresponse()
            self._reply(response.status, response.read())
            upstream.close()
        finally:
            with proxy.lock:
                proxy.in_flight -= 1

    def _reply(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def proxy(server):
    proxies = []

    def make(faults=(), default=None) -> FaultProxy:
        proxies.append(FaultProxy(server, faults, default))
        return proxies[-1]

    yield make
    for p in proxies:
        p.shutdown()
        p.server_close()


def accounted(store, manifest) -> list[tuple[str, str, int]]:
    return [(r["chunk_id"], r["task_type"], r["sample_index"])
            for table in ("examples", "dropped_generations") for r in store.read_table(manifest, table).to_pylist()]


def test_generate_shard_through_server_with_lineage(tmp_path, server, caplog):
    caplog.set_level(logging.DEBUG)
    store = LocalStore(tmp_path / "store")
    chunks, rows = paragraph_chunks(store, RUN, 4)
    config = make_config(tmp_path, task_types=TASK_TYPES, n=2, checkpoint_prompts=5)
    with OpenAICompletionsEngine(config, f"{server}/v1", api_key=API_KEY, concurrency=4, retry=FAST) as engine:
        manifest = generate_shard(store, RUN, config, chunks, 0, engine=engine)

    m = manifest.metrics
    assert m.prompts == 4 * 3 and m.generations == 4 * 3 * 2 and m.checkpoints == 3
    keys = accounted(store, manifest)
    assert len(keys) == len(set(keys)) == m.generations
    assert sum(m.parse_failures.values()) <= 0.25 * m.generations, m.parse_failures  # sampled: a few fail
    assert m.generated_tokens > 0

    examples = store.read_table(manifest, "examples").to_pylist()
    assert {e["task_type"] for e in examples} == set(TASK_TYPES)
    by_chunk = {r["chunk_id"]: r for r in rows}
    for ex in examples:
        chunk = by_chunk[ex["chunk_id"]]
        assert (ex["doc_id"], ex["char_start"], ex["char_end"]) == ("doc", chunk["char_start"], chunk["char_end"])
        assert ex["sample_index"] in (0, 1) and ex["run_id"] == "r1"
        assert (ex["model_id"], ex["model_revision"]) == (str(TINY_MODEL), model_revision(config))
        assert json.loads(ex["sampling_params"]) == config.sampling_params()
        assert ex["input"] and ex["output"] and "<|pipe|>" not in ex["input"] + ex["output"]
    assert API_KEY not in caplog.text


def test_transient_errors_are_retried(tmp_path, proxy, caplog):
    faults = ["429", "503", "stall", "drop", "500"]
    gateway = proxy(faults)
    store = LocalStore(tmp_path / "store")
    chunks, _ = paragraph_chunks(store, RUN, 3)
    config = make_config(tmp_path, task_types=TASK_TYPES, n=2)
    with OpenAICompletionsEngine(config, gateway.url, api_key=API_KEY, concurrency=3, retry=FAST) as engine:
        manifest = generate_shard(store, RUN, config, chunks, 0, engine=engine)

    keys = accounted(store, manifest)
    assert len(keys) == len(set(keys)) == 3 * 3 * 2
    actions = gateway.actions("/v1/completions")
    assert [a for a in actions if a != "forwarded"] == faults
    assert actions.count("forwarded") >= 9  # one answer per prompt
    retries = [r.getMessage() for r in caplog.records if "; retry " in r.getMessage()]
    assert len(retries) >= len(faults)
    assert any("429" in r for r in retries) and any("ReadTimeout" in r for r in retries)
    assert API_KEY not in caplog.text


def test_exhausted_retries_fail_then_the_retry_resumes(tmp_path, proxy):
    gateway = proxy([None] * 3, default="503")  # three prompts answered, then the server "dies"
    store = LocalStore(tmp_path / "store")
    chunks, _ = paragraph_chunks(store, RUN, 2)
    config = make_config(tmp_path, task_types=TASK_TYPES, n=2, checkpoint_prompts=1)
    retry = RetryPolicy(attempts=3, base_delay_s=0.05, max_delay_s=0.2, timeout_s=5)
    with OpenAICompletionsEngine(config, gateway.url, api_key=API_KEY, concurrency=1, retry=retry) as engine:
        with pytest.raises(EngineFailure) as failure:
            generate_shard(store, RUN, config, chunks, 0, engine=engine)
    assert failure.value.kind == "engine_died"
    message = str(failure.value)
    assert "3 attempt(s)" in message and "HTTP 503" in message and f"{gateway.url}/health" in message
    assert gateway.actions("/v1/completions") == ["forwarded"] * 3 + ["503"] * 3
    assert store.exists(f"{StageWriter(store, RUN, 'generate', partition=0).prefix}/{ENGINE_FAILURES}")

    gateway.default = None  # the server is back: the retry generates only what is missing
    with OpenAICompletionsEngine(config, gateway.url, api_key=API_KEY, concurrency=2, retry=retry) as engine:
        manifest = generate_shard(store, RUN, config, chunks, 0, engine=engine)
    assert manifest.metrics.resumed_prompts == 3
    keys = accounted(store, manifest)
    assert len(keys) == len(set(keys)) == 2 * 3 * 2


def test_rejections_fail_fast_without_retries(tmp_path, proxy, caplog):
    config = make_config(tmp_path, task_types=TASK_TYPES)
    gateway = proxy(["400"])

    with pytest.raises(EngineFailure) as wrong_model:
        OpenAICompletionsEngine(config, gateway.url, api_key=API_KEY, served_model_name="bonito-v9", retry=FAST).load()
    assert wrong_model.value.kind == "rejected"
    assert "'bonito-v9'" in str(wrong_model.value) and gateway.url in str(wrong_model.value)
    assert str(TINY_MODEL) in str(wrong_model.value)  # names what the server does serve

    wrong_key = "sk-wrong-0123456789"
    with pytest.raises(EngineFailure) as unauthorized:
        OpenAICompletionsEngine(config, gateway.url, api_key=wrong_key, retry=FAST).load()
    assert unauthorized.value.kind == "rejected" and "HTTP 401" in str(unauthorized.value)
    assert wrong_key not in str(unauthorized.value) + caplog.text

    with OpenAICompletionsEngine(config, gateway.url, api_key=API_KEY, concurrency=1, retry=FAST) as engine:
        with pytest.raises(EngineFailure) as bad_request:
            list(engine.stream({0: "a prompt", 1: "another"}, config.sampling_params(), flush_every=1))
    assert bad_request.value.kind == "rejected" and "HTTP 400: injected 400" in str(bad_request.value)
    assert gateway.actions("/v1/models") == ["forwarded"] * 3
    assert gateway.actions("/v1/completions") == ["400"]  # not retried; the queued prompt never sent
    assert not [r for r in caplog.records if "; retry " in r.getMessage()]


def test_requests_in_flight_are_bounded(tmp_path, proxy):
    gateway = proxy()
    store = LocalStore(tmp_path / "store")
    chunks, _ = paragraph_chunks(store, RUN, 4)
    config = make_config(tmp_path, task_types=TASK_TYPES, n=1)
    with OpenAICompletionsEngine(config, gateway.url, api_key=API_KEY, concurrency=2, retry=FAST) as engine:
        manifest = generate_shard(store, RUN, config, chunks, 0, engine=engine)
    assert len(accounted(store, manifest)) == 4 * 3
    assert len(gateway.actions("/tokenize")) == len(gateway.actions("/v1/completions")) == 12
    assert gateway.max_in_flight == 2  # bounded, and the bound was used


def test_stopping_early_cancels_queued_requests(tmp_path, proxy):
    gateway = proxy()
    config = make_config(tmp_path, task_types=TASK_TYPES, max_tokens=16)
    prompts = {i: f"<|tasktype|>\nsummarization\n<|context|>\nClause {i}.\n<|task|>\n" for i in range(8)}
    with OpenAICompletionsEngine(config, gateway.url, api_key=API_KEY, concurrency=1, retry=FAST) as engine:
        stream = engine.stream(prompts, config.sampling_params(), flush_every=1)
        [(index, completions)] = next(stream)
        stream.close()
        time.sleep(0.5)
    assert index in prompts and len(completions) == 1 and completions[0].n_tokens > 0
    assert len(gateway.actions("/v1/completions")) <= 2  # the one answered, at most one already sent
