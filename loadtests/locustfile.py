"""Locust scenario: the mixed traffic an application sends to agentplane agents.

Each simulated user picks an agent at random for every task and sends, by weight:

| weight | task | stats entry (type, name) |
|---|---|---|
| 6 | chat: non-streaming, or streaming with probability `AGENTPLANE_LOAD_STREAM_RATIO` | `POST chat`, `POST chat stream` (until `[DONE]`), `SSE chat stream TTFT` (until the first content token) |
| 2 | knowledge query on the agent's knowledge base | `POST knowledge query` |
| 1 | `GET /v1/models` | `GET models` |

Outcomes:
- success: 200 and a well-formed body (a `chat.completion` with content; for a stream, SSE `data:`
  events of `chat.completion.chunk`s with content and a finish reason, then `data: [DONE]`).
- quota rejection: a 429, or a `rate_limit_error` event inside a stream. Reported as success under
  the request type `429` (rows `429 chat`, `429 chat stream`, ...). A tenant over its quota is the
  runtime doing its job, so it must not fail the run (locust exits 1 on any failure), and its fast
  answers must not pull down the latency percentiles of the requests that were served; a row of
  its own shows how many there were and how fast they came back.
- failure: anything else: another status (5xx, 4xx, no response), a body that is not what the API
  promises, a malformed event stream (not `text/event-stream`, a line that is no SSE field, an event
  that is not JSON or not a chunk, no `[DONE]`, data after it), or an error event in a stream.

Streams are read with `HttpUser` (requests): it hands over each chunk as it arrives. `FastHttpUser`
reads a stream in 1024-byte blocks, so a short stream arrives all at once and the time to the first
token would be the time of the whole stream.

Configuration, from the environment:

- `AGENTPLANE_LOAD_TARGETS`: agent base URLs (ending in `/v1`), comma- or space-separated. A path
  is joined to `--host`. `#<kb>` names the knowledge base to query (fragments never leave the
  client); targets without one get no knowledge queries. Default: the four example agents of
  `specs/` at their `agentplane up` paths, with their knowledge bases.
- `AGENTPLANE_LOAD_API_KEYS`: one key for every target, or one per target in order; or
- `AGENTPLANE_STATE`: the state directory of `agentplane up`; each target's key is its tenant's (from
  the `/t/<tenant>/a/<agent>/v1` path) in `<state>/api-keys.json`.
- `AGENTPLANE_LOAD_PROMPTS`: a file with one prompt per line (`#` comments and blank lines skipped),
  used for chats and knowledge queries. Default: questions about the example specs' knowledge.
- `AGENTPLANE_LOAD_STREAM_RATIO`: the share of chats that stream, 0 to 1 (default 0.5).
- `AGENTPLANE_LOAD_THINK_SECONDS`: `min,max` wait between a user's tasks (default `0.2,1.0`).
- `AGENTPLANE_LOAD_TIMEOUT_SECONDS`: connect and read timeout per request (default 60).

Headless against `agentplane up` (default port 8080, state `.agentplane/`):

    uv run agentplane up &
    AGENTPLANE_STATE=.agentplane uv run locust -f loadtests/locustfile.py --headless \\
        -H http://127.0.0.1:8080 -u 16 -r 4 -t 60s --only-summary --csv .agentplane/load

Against one agent in a staging cluster:

    AGENTPLANE_LOAD_TARGETS='https://support-bot.acme.staging.example/v1#help-center' \\
    AGENTPLANE_LOAD_API_KEYS=ap_... uv run locust -f loadtests/locustfile.py --headless -u 50 -r 5 -t 5m

The example tenant `globex` allows 60 requests per minute, so against the example specs a share of
its chats comes back as `429` rows: that is the quota working.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, cast
from urllib.parse import urldefrag, urlsplit

import gevent  # type: ignore[import-untyped]
import requests
from locust import HttpUser, events, task
from locust.clients import ResponseContextManager
from locust.env import Environment
from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CHAT = "chat"
STREAM = "chat stream"
TTFT = "chat stream TTFT"
KNOWLEDGE = "knowledge query"
MODELS = "models"
QUOTA_TYPE = "429"
"""The request type under which quota rejections are reported (as successes)."""
TTFT_TYPE = "SSE"

EXAMPLE_TARGETS = (
    "/t/acme/a/support-bot/v1#help-center",
    "/t/acme/a/billing-assistant/v1#billing-policies",
    "/t/acme/a/legacy-support-bot/v1#help-center",
    "/t/globex/a/oncall-helper/v1#runbooks",
)
EXAMPLE_PROMPTS = (
    "How do I return an item I bought last week?",
    "How long does standard shipping take, and can I track my parcel?",
    "I forgot my password, how do I get back into my account?",
    "What is the pro-rated refund: 1200 * 5 / 12 ?",
    "When are invoices issued and where do I download a copy?",
    "Can I get a refund for the unused months of an annual plan?",
    "How do I promote the database replica during a failover?",
    "Latency is high on the checkout API, what should I check first?",
    "A TLS certificate expires tomorrow, what is the renewal procedure?",
)
_AGENT_PATH = re.compile(r"/t/(?P<tenant>[^/]+)/a/(?P<agent>[^/]+)/v1/?$")
_SSE_FIELDS = frozenset({"data", "event", "id", "retry"})
_QUOTA_ERRORS = frozenset({"rate_limit_error", "insufficient_quota"})


class LoadSettings(BaseSettings):
    """The scenario's configuration, from `AGENTPLANE_LOAD_*` and `AGENTPLANE_STATE`."""

    model_config = SettingsConfigDict(env_prefix="AGENTPLANE_LOAD_", frozen=True)

    targets: Annotated[tuple[str, ...], NoDecode] = EXAMPLE_TARGETS
    """Agent base URLs (or paths joined to the host), each with an optional `#<knowledge base>`."""
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    """One API key for every target, or one per target."""
    state: Path | None = Field(default=None, validation_alias="AGENTPLANE_STATE")
    """The state directory of `agentplane up`, whose `api-keys.json` holds each tenant's key."""
    prompts: Path | None = None
    """A file with one prompt per line."""
    stream_ratio: float = Field(default=0.5, ge=0.0, le=1.0)
    """The share of chats that stream."""
    think_seconds: Annotated[tuple[float, float], NoDecode] = (0.2, 1.0)
    """Minimum and maximum wait between two tasks of a user."""
    timeout_seconds: float = Field(default=60.0, gt=0)
    """Connect and read timeout of every request."""

    @field_validator("targets", "api_keys", "think_seconds", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(value.replace(",", " ").split())
        return value


class ConfigurationError(Exception):
    """The scenario cannot run as configured; the message says which variable to fix."""


@dataclass(frozen=True)
class Target:
    url: str
    """The agent's base URL, ending in `/v1`."""
    key: str
    model: str
    knowledge_base: str | None


@dataclass(frozen=True)
class Plan:
    targets: tuple[Target, ...]
    knowledge_targets: tuple[Target, ...]
    prompts: tuple[str, ...]
    stream_ratio: float
    think_seconds: tuple[float, float]
    timeout_seconds: float

    @classmethod
    def load(cls, host: str | None) -> Plan:
        """The plan from the environment (see the module docstring); `host` resolves target paths."""
        try:
            settings = LoadSettings()
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                variable = (
                    "AGENTPLANE_STATE" if field == "AGENTPLANE_STATE" else f"AGENTPLANE_LOAD_{field.upper()}"
                )
                problems.append(f"{variable}: {error['msg']}")
            raise ConfigurationError("; ".join(problems)) from None
        return cls.from_settings(settings, host)

    @classmethod
    def from_settings(cls, settings: LoadSettings, host: str | None) -> Plan:
        if not settings.targets:
            raise ConfigurationError("AGENTPLANE_LOAD_TARGETS: no target")
        urls = [_absolute(target, host) for target in settings.targets]
        keys = _keys(settings, [url for url, _ in urls])
        targets = tuple(
            Target(url=url, key=key, model=_agent_of(url) or "agent", knowledge_base=kb)
            for (url, kb), key in zip(urls, keys, strict=True)
        )
        low, high = settings.think_seconds
        if not 0 <= low <= high:
            raise ConfigurationError("AGENTPLANE_LOAD_THINK_SECONDS: expected `min,max` with 0 <= min <= max")
        return cls(
            targets=targets,
            knowledge_targets=tuple(t for t in targets if t.knowledge_base),
            prompts=_prompts(settings.prompts),
            stream_ratio=settings.stream_ratio,
            think_seconds=(low, high),
            timeout_seconds=settings.timeout_seconds,
        )


def _absolute(target: str, host: str | None) -> tuple[str, str | None]:
    url, kb = urldefrag(target)
    if not urlsplit(url).scheme:
        if not host:
            raise ConfigurationError(f"AGENTPLANE_LOAD_TARGETS: {url} is a path and no --host is given")
        url = f"{host.rstrip('/')}/{url.lstrip('/')}"
    return url.rstrip("/"), kb or None


def _agent_of(url: str) -> str | None:
    match = _AGENT_PATH.search(urlsplit(url).path)
    return match["agent"] if match else None


def _keys(settings: LoadSettings, urls: list[str]) -> list[str]:
    if settings.api_keys:
        if len(settings.api_keys) == 1:
            return [settings.api_keys[0]] * len(urls)
        if len(settings.api_keys) == len(urls):
            return list(settings.api_keys)
        raise ConfigurationError(
            f"AGENTPLANE_LOAD_API_KEYS: {len(settings.api_keys)} keys for {len(urls)} targets; "
            "give one key, or one per target"
        )
    if settings.state is None:
        raise ConfigurationError(
            "no API key: set AGENTPLANE_LOAD_API_KEYS, or AGENTPLANE_STATE to the state directory of `agentplane up`"
        )
    path = settings.state / "api-keys.json"
    try:
        saved: object = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"AGENTPLANE_STATE: cannot read {path}: {exc}") from None
    if not isinstance(saved, dict):
        raise ConfigurationError(f"AGENTPLANE_STATE: {path} is not an object of tenant keys")
    keys = []
    for url in urls:
        match = _AGENT_PATH.search(urlsplit(url).path)
        if match is None:
            raise ConfigurationError(
                f"AGENTPLANE_STATE: {url} is not an `agentplane up` URL (/t/<tenant>/a/<agent>/v1); "
                "use AGENTPLANE_LOAD_API_KEYS"
            )
        key = saved.get(match["tenant"])
        if not isinstance(key, str):
            raise ConfigurationError(f"AGENTPLANE_STATE: {path} has no key for tenant {match['tenant']!r}")
        keys.append(key)
    return keys


def _prompts(path: Path | None) -> tuple[str, ...]:
    if path is None:
        return EXAMPLE_PROMPTS
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigurationError(f"AGENTPLANE_LOAD_PROMPTS: cannot read {path}: {exc.strerror}") from None
    prompts = tuple(s for line in lines if (s := line.strip()) and not s.startswith("#"))
    if not prompts:
        raise ConfigurationError(f"AGENTPLANE_LOAD_PROMPTS: {path} has no prompt")
    return prompts


# -- reading responses ------------------------------------------------------------------------


class MalformedStream(Exception):
    """The body is not the event stream the API promises."""


class StreamError(Exception):
    """The server sent an `{"error": ...}` event."""

    def __init__(self, type_: str, code: str) -> None:
        super().__init__(f"{type_}/{code}")
        self.type = type_


def _get(value: object, *path: str | int) -> object:
    """`value[path[0]][path[1]]...`, or None where the JSON has another shape."""
    for step in path:
        if isinstance(step, str) and isinstance(value, dict):
            value = value.get(step)
        elif isinstance(step, int) and isinstance(value, list) and -len(value) <= step < len(value):
            value = value[step]
        else:
            return None
    return value


def _json(response: ResponseContextManager) -> object:
    try:
        body: object = response.json()
    except ValueError:
        return None
    return body


def sse_events(lines: Iterable[bytes]) -> Iterator[str]:
    """The `data` of each server-sent event; MalformedStream on a line that is no SSE field."""
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8", errors="strict")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if name not in _SSE_FIELDS:
            raise MalformedStream(f"a line is not an SSE field: {line[:40]!r}")
        if name == "data":
            data.append(value.removeprefix(" ") if colon else "")


@dataclass
class ChatStream:
    """What has been read of a `chat.completion.chunk` stream."""

    content: str = ""
    finish_reason: str | None = None
    done: bool = False

    def feed(self, data: str) -> bool:
        """Take one event's data; True when it carried the first content."""
        if self.done:
            raise MalformedStream("an event after [DONE]")
        if data == "[DONE]":
            self.done = True
            return False
        try:
            event: object = json.loads(data)
        except ValueError:
            raise MalformedStream("an event is not JSON") from None
        if _get(event, "error") is not None:
            raise StreamError(str(_get(event, "error", "type")), str(_get(event, "error", "code")))
        choices = _get(event, "choices")
        if _get(event, "object") != "chat.completion.chunk" or not isinstance(choices, list):
            raise MalformedStream("an event is not a chat.completion.chunk")
        first = False
        for index in range(len(choices)):
            text = _get(choices, index, "delta", "content")
            if isinstance(text, str) and text:
                first = first or not self.content
                self.content += text
            reason = _get(choices, index, "finish_reason")
            if isinstance(reason, str):
                self.finish_reason = reason
        return first

    def problem(self) -> str | None:
        """Why the finished stream is not a complete answer, or None."""
        if not self.done:
            return "malformed SSE: the stream ended without [DONE]"
        if not self.content:
            return "malformed SSE: no content"
        if self.finish_reason is None:
            return "malformed SSE: no finish_reason"
        return None


def _meta(response: ResponseContextManager) -> dict[str, object]:
    # the stats record locust reports when the `with` block ends; we adjust its type, time and size
    return cast("dict[str, object]", response.request_meta)


def _succeed(response: ResponseContextManager) -> None:
    response.success()  # type: ignore[no-untyped-call]


def _fail(response: ResponseContextManager, message: str) -> None:
    response.failure(message)  # type: ignore[no-untyped-call]


def _quota(response: ResponseContextManager) -> None:
    _meta(response)["request_type"] = QUOTA_TYPE
    _succeed(response)


def _settled(response: ResponseContextManager) -> bool:
    """Report a response that is not a 200 (a quota rejection, or a failure); False for a 200."""
    status = response.status_code
    if status == 200:
        return False
    if status == 429:
        _quota(response)
    elif not status:
        _fail(response, f"no response ({type(response.error).__name__})")
    else:
        body = _json(response)
        kind = _get(body, "error", "code") or _get(body, "error", "type") or "no error body"
        _fail(response, f"HTTP {status} {kind}")
    return True


# -- the user ---------------------------------------------------------------------------------


class AgentUser(HttpUser):
    """An application talking to agents through their OpenAI-compatible API."""

    host = "http://127.0.0.1:8080"
    plan: Plan

    def on_start(self) -> None:
        self.plan = Plan.load(self.host)

    def wait_time(self) -> float:
        return random.uniform(*self.plan.think_seconds)

    def _headers(self, target: Target) -> dict[str, str]:
        return {"Authorization": f"Bearer {target.key}"}

    def _timeout(self) -> tuple[float, float]:
        return (self.plan.timeout_seconds, self.plan.timeout_seconds)

    @task(6)
    def chat(self) -> None:
        target = random.choice(self.plan.targets)
        prompt = random.choice(self.plan.prompts)
        if random.random() < self.plan.stream_ratio:
            self._chat_stream(target, prompt)
        else:
            self._chat(target, prompt)

    def _chat(self, target: Target, prompt: str) -> None:
        body = {"model": target.model, "messages": [{"role": "user", "content": prompt}]}
        response = self.client.post(
            f"{target.url}/chat/completions",
            json=body,
            headers=self._headers(target),
            name=CHAT,
            timeout=self._timeout(),
            catch_response=True,
        )
        with response:
            if _settled(response):
                return
            reply = _json(response)
            content = _get(reply, "choices", 0, "message", "content")
            if _get(reply, "object") != "chat.completion" or not isinstance(content, str) or not content:
                _fail(response, "not a chat.completion with content")
            else:
                _succeed(response)

    def _chat_stream(self, target: Target, prompt: str) -> None:
        body = {
            "model": target.model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.perf_counter()
        start_time = time.time()
        response = self.client.post(
            f"{target.url}/chat/completions",
            json=body,
            headers=self._headers(target),
            name=STREAM,
            timeout=self._timeout(),
            stream=True,
            catch_response=True,
        )
        with response:
            if _settled(response):
                return
            stream = ChatStream()
            size = 0

            def counted(lines: Iterable[bytes]) -> Iterator[bytes]:
                nonlocal size
                for line in lines:
                    size += len(line) + 1
                    yield line

            try:
                if not response.headers.get("content-type", "").startswith("text/event-stream"):
                    raise MalformedStream("the response is not text/event-stream")
                for data in sse_events(counted(response.iter_lines())):
                    if stream.feed(data):
                        self.environment.events.request.fire(
                            request_type=TTFT_TYPE,
                            name=TTFT,
                            response_time=(time.perf_counter() - started) * 1000,
                            response_length=size,
                            response=None,
                            context={},
                            exception=None,
                            start_time=start_time,
                            url=response.url,
                        )
                problem = stream.problem()
                if problem:
                    _fail(response, problem)
                else:
                    _succeed(response)
            except StreamError as exc:
                if exc.type in _QUOTA_ERRORS:
                    _quota(response)
                else:
                    _fail(response, f"error event in the stream: {exc}")
            except (MalformedStream, UnicodeDecodeError) as exc:
                _fail(response, f"malformed SSE: {exc}")
            except requests.RequestException as exc:
                _fail(response, f"stream broken ({type(exc).__name__})")
            finally:
                response.close()  # a stream left half-read must not go back to the pool
                meta = _meta(response)
                meta["response_time"] = (time.perf_counter() - started) * 1000
                meta["response_length"] = size

    @task(2)
    def knowledge_query(self) -> None:
        if not self.plan.knowledge_targets:
            return
        target = random.choice(self.plan.knowledge_targets)
        response = self.client.post(
            f"{target.url}/knowledge/{target.knowledge_base}/query",
            json={"query": random.choice(self.plan.prompts)},
            headers=self._headers(target),
            name=KNOWLEDGE,
            timeout=self._timeout(),
            catch_response=True,
        )
        with response:
            if _settled(response):
                return
            if not isinstance(_get(_json(response), "data"), list):
                _fail(response, "no `data` list of hits")
            else:
                _succeed(response)

    @task(1)
    def models(self) -> None:
        target = random.choice(self.plan.targets)
        response = self.client.get(
            f"{target.url}/models",
            headers=self._headers(target),
            name=MODELS,
            timeout=self._timeout(),
            catch_response=True,
        )
        with response:
            if _settled(response):
                return
            data = _get(_json(response), "data")
            if not isinstance(data, list) or not data:
                _fail(response, "no `data` list of models")
            else:
                _succeed(response)


@events.init.add_listener  # type: ignore[untyped-decorator]
def _check_configuration(environment: Environment, **_: object) -> None:
    """Refuse to start, with the reason, instead of failing in every user."""
    try:
        Plan.load(environment.host or AgentUser.host)
    except ConfigurationError as exc:
        raise SystemExit(f"loadtests/locustfile.py: {exc}") from None
    # `--run-time` is a gevent timer, and gevent's clock is cached: it stood still while locust and
    # this file were imported (0.7 s on an idle machine, seconds on a busy one), which would cut the
    # run short by as much
    gevent.get_hub().loop.update_now()
