"""How an LLM call reaches its provider, and the one shape every answer takes (`Delta`s).

OpenAI and Azure OpenAI speak the OpenAI wire format, so their calls go out directly: the JSON body
on pooled keep-alive connections (`http1`; aiohttp through a proxy), read back with orjson. litellm still decides the parameters (which ones
the model supports and what they are called: `max_completion_tokens` for the reasoning models, no
`temperature` where it is refused) and prices the call; it is the per-call machinery around that
(its logging object, callbacks, the openai SDK's request transformation) that the direct path skips.
Every other provider, and the offline model, goes through `litellm.acompletion`, which translates.

Either way a call gives an `Answer`: the `Delta`s of its response, one for a plain call, one per
chunk for a stream. The chat loop reads that one shape, whichever way the call went.
"""

from __future__ import annotations

import functools
import urllib.parse
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import litellm
import orjson
from litellm.utils import get_optional_params

from agentplane_runtime import http1
from agentplane_runtime.http1 import HttpError

DIRECT_PROVIDERS = frozenset({"openai", "azure"})
"""The providers whose calls skip litellm's call path (they speak the OpenAI wire format)."""
OPENAI_API_BASE = "https://api.openai.com/v1"


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of one tool call: a stream sends its id and name once and its arguments in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True)
class Delta:
    """A piece of a model's answer: the whole of a plain call's, or one chunk of a stream's."""

    content: str | None = None
    tool_calls: list[ToolCallDelta] = field(default_factory=list)
    finish_reason: str | None = None
    id: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    """Set when the chunk carries the call's usage (a plain answer; a stream's last chunk)."""
    completion_tokens: int | None = None


Answer = AsyncGenerator[Delta, None]
"""A call's response as `Delta`s; `aclose()` gives its connection back when it is not read to the end."""


class ProviderError(Exception):
    """A provider call that failed on the direct path: `kind` labels the failure in metrics and spans
    (`http_500`, `rate_limited`, `timeout`, `connection_error`)."""

    def __init__(self, message: str, *, kind: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code

    @property
    def retryable(self) -> bool:
        status = self.status_code
        if status is None:
            return True  # a timeout or a connection that failed
        return status in (408, 409, 429) or status >= 500

    @property
    def invalid_request(self) -> bool:
        """The provider refused the request itself (retrying or another model will not help)."""
        return self.status_code in (400, 422)


@dataclass(frozen=True, slots=True)
class Call:
    """One attempt of an LLM call, as the provider is to receive it."""

    model: str
    """litellm's name: `provider/model` (`openai/gpt-4o-mini`, `azure/<deployment>`)."""
    messages: list[dict[str, Any]]
    params: Mapping[str, Any]
    """The OpenAI parameters set for this call (None ones left out): temperature, max_tokens, ..."""
    tools: list[dict[str, Any]] | None
    stream: bool
    timeout: float
    credentials: Mapping[str, Any]
    """`api_key`, `api_base`, and for Azure `api_version`."""


def provider_of(model: str) -> str:
    """The provider of a litellm model name (a name without one is OpenAI's)."""
    prefix, sep, _ = model.partition("/")
    return prefix if sep else "openai"


def is_direct(model: str) -> bool:
    """Whether calls of `model` take the direct path (see the module's docstring)."""
    return provider_of(model) in DIRECT_PROVIDERS


@functools.lru_cache(maxsize=4096)
def _mapped(provider: str, name: str, params: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
    mapped = get_optional_params(model=name, custom_llm_provider=provider, drop_params=True, **dict(params))
    return tuple((k, v) for k, v in mapped.items() if k not in ("stream", "extra_body") and v is not None)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def provider_params(model: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` as `model`'s provider takes them, by litellm's rules: renamed where the model names a
    parameter otherwise, left out where it does not support one (remembered per model and values)."""
    provider, _, name = model.partition("/")
    key = tuple(sorted((k, _hashable(v)) for k, v in params.items() if v is not None))
    return {k: list(v) if isinstance(v, tuple) else v for k, v in _mapped(provider, name, key)}


@functools.lru_cache(maxsize=64)
def _proxy_for_origin(scheme: str, host: str) -> str | None:
    if urllib.request.proxy_bypass(host):  # NO_PROXY (on Linux, the environment's only)
        return None
    return urllib.request.getproxies_environment().get(scheme)


def proxy_for(url: str) -> str | None:
    """The proxy a call to `url` goes through: `HTTPS_PROXY` (or `HTTP_PROXY`) unless `NO_PROXY`
    exempts its host, as httpx and the openai SDK decide (read once per host: a pod's environment
    does not change)."""
    parts = urllib.parse.urlsplit(url)
    return _proxy_for_origin(parts.scheme, parts.hostname or "")


class _Proxied:
    """An aiohttp response (a call through a proxy) read the way an `http1.Response` is."""

    __slots__ = ("_response", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.status = response.status
        self._response = response

    async def read(self, limit: int | None = None) -> bytes:
        try:
            response = self._response
            data = await (response.read() if limit is None else response.content.read(limit))
        except aiohttp.ClientError as exc:
            self.close()
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.close()
            raise
        if limit is None:
            self.release()
        else:
            self.close()
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._response.content.iter_any():
                yield piece
        except aiohttp.ClientError as exc:
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc

    def release(self) -> None:
        self._response.release()

    def close(self) -> None:
        self._response.close()


Response = http1.Response | _Proxied


class DirectClient:
    """OpenAI-format calls on pooled keep-alive connections (the direct path): `http1.Http1Pool`, or
    aiohttp for a call that goes through a proxy (see `proxy_for`)."""

    def __init__(self, *, max_connections: int = 200) -> None:
        self.max_connections = max_connections
        self._pool = http1.Http1Pool(max_connections=max_connections)
        self._session: aiohttp.ClientSession | None = None

    def _proxied(self) -> aiohttp.ClientSession:
        if self._session is None:  # made in the running loop, on the first call through a proxy
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
                trust_env=False,  # the proxy is `proxy_for`'s: aiohttp would read the environment per call
                # every tenant's calls share this session: a cookie one answer sets goes to no later call
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def aclose(self) -> None:
        await self._pool.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def request(call: Call) -> tuple[str, dict[str, str], dict[str, str], bytes]:
        """The HTTP request of `call`: its URL, query, headers by provider, and its JSON body."""
        provider, _, name = call.model.partition("/")
        creds = call.credentials
        key = creds.get("api_key")
        headers = {"content-type": "application/json", "accept": "application/json"}
        query: dict[str, str] = {}
        if provider == "azure":
            base = str(creds.get("api_base") or "").rstrip("/")
            url = f"{base}/openai/deployments/{name}/chat/completions"
            query["api-version"] = str(creds.get("api_version"))
            if key:
                headers["api-key"] = str(key)
        else:
            url = f"{str(creds.get('api_base') or OPENAI_API_BASE).rstrip('/')}/chat/completions"
            if key:
                headers["authorization"] = f"Bearer {key}"
        body: dict[str, Any] = {
            "model": name,
            "messages": call.messages,
            **provider_params(call.model, call.params),
        }
        if call.tools:
            body["tools"] = call.tools
        if call.stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return url, query, headers, orjson.dumps(body)

    async def _send(self, call: Call) -> Response:
        url, query, headers, body = self.request(call)
        proxy = proxy_for(url)
        if proxy is None:
            return await self._pool.post(
                http1.target_of(url, tuple(query.items())),
                headers,
                body,
                connect_timeout=call.timeout,
                read_timeout=call.timeout,
            )
        # `connect` bounds getting a connection, `sock_read` every wait for bytes (a stream's chunks)
        timeout = aiohttp.ClientTimeout(total=None, connect=call.timeout, sock_read=call.timeout)
        try:
            response = await self._proxied().post(
                url, params=query, headers=headers, data=body, timeout=timeout, proxy=proxy
            )
        except aiohttp.ClientError as exc:
            raise HttpError(f"{type(exc).__name__}: {exc}") from exc
        return _Proxied(response)

    async def open(self, call: Call) -> Answer:
        """Send `call`; returns once the response's status and headers are in (a failed status raises
        `ProviderError`); a stream's body is read as the answer is."""
        try:
            response = await self._send(call)
        except TimeoutError as exc:
            raise ProviderError(f"{call.model}: no answer in time", kind="timeout") from exc
        except HttpError as exc:
            raise ProviderError(f"{call.model}: {exc}", kind="connection_error") from exc
        except ValueError as exc:  # a credential that cannot be a header (a line break in a key)
            raise ProviderError(f"{call.model}: {exc}", kind="bad_request", status_code=400) from exc
        if response.status >= 400:
            try:
                detail = (await response.read(500)).decode(errors="replace")
            except (HttpError, TimeoutError):
                detail = ""
            status = response.status
            raise ProviderError(
                f"{call.model}: HTTP {status}: {detail}",
                kind="rate_limited" if status == 429 else f"http_{status}",
                status_code=status,
            )
        if call.stream:
            return _events(response, call.model)
        try:  # a plain answer is read here, so a broken one fails the attempt (and is retried)
            data = orjson.loads(await response.read())
        except TimeoutError as exc:
            raise ProviderError(f"{call.model}: no answer in time", kind="timeout") from exc
        except (HttpError, orjson.JSONDecodeError) as exc:
            raise ProviderError(
                f"{call.model}: unreadable answer ({exc})",
                kind="bad_response",
                status_code=502,
            ) from exc
        return _one(_delta(data, whole=True))


async def _one(delta: Delta) -> Answer:
    yield delta


async def _events(response: Response, model: str) -> Answer:
    """A server-sent event stream's chunks (`data: {...}`, up to `data: [DONE]`)."""
    done = ended = False
    pending = bytearray()
    try:
        async for piece in response.chunks():
            pending += piece
            while not ended and (end := pending.find(b"\n")) >= 0:
                line = bytes(pending[:end]).strip()
                del pending[: end + 1]
                if not line.startswith(b"data:"):
                    continue  # blank lines between events, comments, `event:` lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    ended = True  # the body's end follows: read it, so the connection can be reused
                    break
                try:
                    data = orjson.loads(payload)
                except orjson.JSONDecodeError as exc:
                    raise ProviderError(f"{model}: unreadable stream chunk", kind="bad_response") from exc
                if "error" in data and "choices" not in data:
                    error = data["error"] if isinstance(data["error"], dict) else {"message": data["error"]}
                    raise ProviderError(f"{model}: {error.get('message', 'error')}", kind="stream_error")
                yield _delta(data, whole=False)
        done = True
    except TimeoutError as exc:
        raise ProviderError(f"{model}: the stream stalled", kind="timeout") from exc
    except HttpError as exc:
        raise ProviderError(f"{model}: the stream broke ({exc})", kind="connection_error") from exc
    finally:
        if done:
            response.release()  # read to its end: the connection goes back to the pool
        else:
            response.close()  # abandoned or broken: the rest of its body is not waited for


def _delta(data: dict[str, Any], *, whole: bool) -> Delta:
    """A response (`whole`: a `chat.completion`) or a stream chunk, as a `Delta`."""
    delta = Delta(id=data.get("id"), model=data.get("model"))
    usage = data.get("usage")
    if usage:
        delta.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        delta.completion_tokens = int(usage.get("completion_tokens") or 0)
    choices = data.get("choices") or ()
    if choices:
        choice = choices[0]
        part = choice.get("message" if whole else "delta") or {}
        delta.content = part.get("content")
        delta.finish_reason = choice.get("finish_reason")
        for i, tc in enumerate(part.get("tool_calls") or ()):
            function = tc.get("function") or {}
            delta.tool_calls.append(
                ToolCallDelta(
                    index=i if whole else int(tc.get("index") or 0),
                    id=tc.get("id"),
                    name=function.get("name"),
                    arguments=function.get("arguments"),
                )
            )
    return delta


async def open_litellm(call: Call) -> Answer:
    """Send `call` through `litellm.acompletion` (every provider but the direct ones)."""
    kwargs: dict[str, Any] = {
        **call.credentials,
        **call.params,
        "model": call.model,
        "messages": call.messages,
        "timeout": call.timeout,
        "max_retries": 0,
    }
    if call.tools:
        kwargs["tools"] = call.tools
        # litellm would otherwise import its proxy's MCP gateway (and the `mcp` package) for any
        # request with tools; our tools are run by us, never by litellm. There is no public switch
        # (1.106): the import precedes the check; litellm's own calls pass this.
        kwargs["_skip_mcp_handler"] = True
    if call.stream:
        kwargs["stream"] = True
        kwargs["stream_options"] = {"include_usage": True}
    response = await litellm.acompletion(**kwargs)
    return _litellm_chunks(response) if call.stream else _one(_litellm_delta(response, whole=True))


async def _litellm_chunks(stream: Any) -> Answer:
    iterator: AsyncIterator[Any] = aiter(stream)
    async for chunk in iterator:
        yield _litellm_delta(chunk, whole=False)


def _litellm_delta(response: Any, *, whole: bool) -> Delta:
    delta = Delta(id=getattr(response, "id", None), model=getattr(response, "model", None))
    usage = getattr(response, "usage", None)
    if usage is not None and getattr(usage, "prompt_tokens", None) is not None:
        delta.prompt_tokens = int(usage.prompt_tokens or 0)
        delta.completion_tokens = int(usage.completion_tokens or 0)
    choices = getattr(response, "choices", None) or ()
    if choices:
        choice = choices[0]
        part = choice.message if whole else choice.delta
        delta.content = getattr(part, "content", None)
        delta.finish_reason = choice.finish_reason
        for i, tc in enumerate(getattr(part, "tool_calls", None) or ()):
            function = tc.function
            delta.tool_calls.append(
                ToolCallDelta(
                    index=i if whole else int(tc.index or 0),
                    id=tc.id,
                    name=getattr(function, "name", None),
                    arguments=getattr(function, "arguments", None),
                )
            )
    return delta
