"""The load scenario (loadtests/locustfile.py) as a platform team runs it: locust headless in its own
process (gevent never patches this one), against `agentplane up` over a copy of the example specs,
and against a broken server to show that what is not a quota rejection fails the run.

The runs go concurrently, so the module costs one `up` start and one locust run of wall time."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from support.agentplane_up import KEYWORDS_ONLY, Up, copy_specs, start
from support.locust import Run, collect, locust

ACME = (
    "/t/acme/a/support-bot/v1#help-center",
    "/t/acme/a/billing-assistant/v1#billing-policies",
    "/t/acme/a/legacy-support-bot/v1",
)
GLOBEX = "/t/globex/a/oncall-helper/v1#runbooks"


class BrokenRuntime(BaseHTTPRequestHandler):
    """Answers like a runtime gone wrong: a 500 for chats, a stream that turns into garbage, a
    knowledge answer without hits, models as usual."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, b'{"object": "list", "data": [{"id": "helper", "object": "model"}]}')

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path.endswith("/query"):
            self._send(200, b'{"data": "not a list"}')
        elif request.get("stream"):
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}
            body = f"data: {json.dumps(chunk)}\n\n<html>upstream timeout</html>\n\n".encode()
            self._send(200, body, "text/event-stream")
        else:
            self._send(500, b'{"error": {"message": "internal error", "type": "api_error", "code": null}}')


def edit(path: Path, *replacements: tuple[str, str]) -> None:
    text = path.read_text()
    for old, new in replacements:
        assert old in text, f"{path} changed: no {old!r}"
        text = text.replace(old, new)
    path.write_text(text)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """`agentplane up` over the example specs, with acme's quotas out of reach, globex's at 2
    requests per minute, and keyword retrieval only (loading the local embedding model would double
    the start-up time of this module and test nothing here)."""
    tmp = tmp_path_factory.mktemp("load")
    specs = copy_specs(tmp)
    tenants = specs / "tenants"
    edit(
        tenants / "acme" / "tenant.yaml",
        ("tokensPerMinute: 400000", "tokensPerMinute: 1000000000"),
        ("requestsPerMinute: 1200", "requestsPerMinute: 1000000"),
    )
    edit(
        tenants / "globex" / "tenant.yaml",
        ("requestsPerMinute: 60", "requestsPerMinute: 2"),
    )
    server = start(specs, tmp / "state", tmp / "up.log", **KEYWORDS_ONLY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runs(up: Up, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    tmp = tmp_path_factory.mktemp("locust")
    broken = ThreadingHTTPServer(("127.0.0.1", 0), BrokenRuntime)
    thread = threading.Thread(target=broken.serve_forever, daemon=True)
    thread.start()
    state = str(up.state)
    started = {
        "mixed": locust(
            up.base, tmp / "mixed", 9, 4, AGENTPLANE_STATE=state, AGENTPLANE_LOAD_TARGETS=",".join(ACME)
        ),
        "quota": locust(up.base, tmp / "quota", 6, 2, AGENTPLANE_STATE=state, AGENTPLANE_LOAD_TARGETS=GLOBEX),
        "broken": locust(
            f"http://127.0.0.1:{broken.server_address[1]}",
            tmp / "broken",
            4,
            2,
            AGENTPLANE_LOAD_TARGETS="/v1#docs",
            AGENTPLANE_LOAD_API_KEYS="sk-anything",
            # it answers at once: no think time, so that the rarest task (models, 1 in 9) is drawn
            # hundreds of times, not the forty or so that once left it out of a run
            AGENTPLANE_LOAD_THINK_SECONDS="0,0.005",
        ),
    }
    try:
        yield {name: collect(process, tmp / name) for name, process in started.items()}
    finally:
        for process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        broken.shutdown()
        broken.server_close()
        thread.join()


def test_mixed_scenario_runs_every_task_without_failures(runs: dict[str, Run]) -> None:
    run = runs["mixed"]
    assert run.code == 0, run.output
    for entry in [("POST", "chat"), ("POST", "chat stream"), ("POST", "knowledge query"), ("GET", "models")]:
        assert run.count(*entry) > 0, (entry, run.output)
    assert run.failed() == 0, run.failures
    assert run.failures == []
    assert run.exceptions == [], run.exceptions
    assert not [key for key in run.stats if key[0] == "429"], run.output  # acme's quotas are out of reach


def test_every_stream_reports_its_time_to_first_token(runs: dict[str, Run]) -> None:
    run = runs["mixed"]
    streams, ttft = run.count("POST", "chat stream"), run.count("SSE", "chat stream TTFT")
    # one first token per served stream; streams cut off by the end of the run may have had theirs
    assert streams <= ttft <= streams + 4
    # the fastest served stream had its first token sooner still
    first = float(run.stats[("SSE", "chat stream TTFT")]["Min Response Time"])
    assert first <= float(run.stats[("POST", "chat stream")]["Min Response Time"])


def test_quota_rejections_are_their_own_outcome_not_failures(runs: dict[str, Run]) -> None:
    run = runs["quota"]
    assert run.code == 0, run.output
    assert run.count("429", "chat") + run.count("429", "chat stream") > 0, run.output
    assert run.count("POST", "chat") + run.count("POST", "chat stream") <= 4  # 2 a minute, maybe 2 windows
    assert run.count("POST", "knowledge query") > 0  # not metered by the request quota
    assert run.failed() == 0, run.failures
    assert run.exceptions == [], run.exceptions


def test_server_errors_and_malformed_streams_fail_the_run(runs: dict[str, Run]) -> None:
    run = runs["broken"]
    assert run.code == 1, run.output
    # locust keeps a failure as the repr of the exception that `response.failure(message)` raises
    errors = {(row["Method"], row["Name"], row["Error"]) for row in run.failures}
    assert ("POST", "chat", "CatchResponseError('HTTP 500 api_error')") in errors
    assert ("POST", "knowledge query", "CatchResponseError('no `data` list of hits')") in errors
    stream = "malformed SSE: a line is not an SSE field: '<html>upstream timeout</html>'"
    assert ("POST", "chat stream", f"CatchResponseError({stream!r})") in errors
    assert run.count("GET", "models") > 0
    assert int(run.stats[("GET", "models")]["Failure Count"]) == 0
    assert run.exceptions == [], run.exceptions
