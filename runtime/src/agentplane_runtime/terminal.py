"""`agentplane chat TENANT/AGENT ["question"]`: a terminal client of a running `agentplane up` (or any
runtime): streams the answer, then shows the sources it drew on and the token usage. Without a
question it is interactive and keeps the conversation until `/exit` or end of input.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import sysconfig
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypedDict

import httpx

from agentplane_runtime.commands import DEFAULT_STATE, DEFAULT_URL

KEYS_FILE = "api-keys.json"
"""Where `agentplane up` keeps each tenant's local API key, in its state directory."""

HELP = "/reset starts a new conversation, /exit (or Ctrl-D) leaves."


def chat_command_line(target: str, question: str | None, *, base_url: str, state: Path) -> str:
    """How to run `agentplane chat TARGET QUESTION` against `base_url` from the current directory, as
    a command that works here (the banner of `agentplane up` shows it):

    - `uv run agentplane chat ...` when uv is on PATH and this environment is the `.venv` of the
      project the current directory is in (where uv run finds it);
    - else, in that project's root when its Makefile has a `chat` target, `make chat AGENT=... Q=...`
      (`make up` installs uv privately, off PATH: the Makefile finds it);
    - else the absolute path of this environment's `agentplane`.

    `--url` and `--state` are added when they are not chat's defaults."""
    options: list[str] = []
    if base_url.rstrip("/") != DEFAULT_URL:
        options += ["--url", base_url]
    if state != Path(DEFAULT_STATE):
        options += ["--state", str(state)]
    cwd = Path.cwd().resolve()
    environment = Path(sys.prefix).resolve()
    project = environment.parent if environment.name == ".venv" else None
    in_project = (
        project is not None and (project / "pyproject.toml").is_file() and cwd.is_relative_to(project)
    )
    if in_project and shutil.which("uv") is not None:
        return shlex.join(
            ["uv", "run", "agentplane", "chat", target, *([question] if question else []), *options]
        )
    makefile = cwd / "Makefile"
    if in_project and cwd == project and makefile.is_file() and "\nchat:" in makefile.read_text():
        words = ["make", "chat", f"AGENT={shlex.quote(target)}"]
        if question:
            words.append(f"Q={shlex.quote(question)}")
        if options:
            words.append(f"CHAT_ARGS={shlex.quote(shlex.join(options))}")
        return " ".join(words)
    script = Path(sysconfig.get_path("scripts")) / "agentplane"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "agentplane_platform"]
    return shlex.join([*command, "chat", target, *([question] if question else []), *options])


class ChatError(Exception):
    """The server refused or could not be reached; the message says what to do."""


class Source(TypedDict):
    """A passage an answer drew on, as the `agentplane.retrieval.sources` of a chunk lists it (also
    `doc_id` and `chunk`, which the terminal does not show)."""

    n: int
    source: str
    score: float


@dataclass
class Reply:
    text: str = ""
    model: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    retrieval: str = ""
    prompt: str = ""


def find_key(tenant: str, state: Path, explicit: str | None) -> str:
    """The API key: `--key`, else AGENTPLANE_API_KEY, else the tenant's key that `up` saved in `state`."""
    if explicit:
        return explicit
    if os.environ.get("AGENTPLANE_API_KEY"):
        return os.environ["AGENTPLANE_API_KEY"]
    path = state / KEYS_FILE
    try:
        keys: dict[str, str] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ChatError(
            f"no API key: {path} does not exist (start `agentplane up` first, or pass --key)"
        ) from None
    if tenant not in keys:
        raise ChatError(f"no API key for tenant {tenant!r} in {path} (known: {', '.join(sorted(keys))})")
    return keys[tenant]


def _error_of(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        request_id = error.get("request_id") or response.headers.get("x-request-id", "")
        return f"{response.status_code} {error.get('message')} (request id {request_id})"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{response.status_code} {response.text[:200]}"


def stream_chat(
    client: httpx.Client,
    url: str,
    key: str,
    agent: str,
    messages: list[dict[str, str]],
    conversation: str | None = None,
) -> Iterator[str | Reply]:
    """Yield the answer's text pieces as they arrive, then one `Reply` with the whole of it.
    `conversation` is sent as `X-Conversation-Id` (the agent's MCP tools keep a session per one)."""
    body = {
        "model": agent,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    reply = Reply()
    headers = {"Authorization": f"Bearer {key}"}
    if conversation is not None:
        headers["X-Conversation-Id"] = conversation
    try:
        with client.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as response:
            if response.status_code != 200:
                response.read()
                raise ChatError(_error_of(response))
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    error = chunk["error"]
                    raise ChatError(f"{error.get('message')} (request id {error.get('request_id', '')})")
                reply.model = chunk.get("model") or reply.model
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        reply.text += piece
                        yield piece
                if chunk.get("usage"):
                    reply.usage = chunk["usage"]
                meta = chunk.get("agentplane") or {}
                if meta:
                    reply.sources = meta.get("retrieval", {}).get("sources", [])
                    reply.retrieval = meta.get("retrieval", {}).get("status", "")
                    prompt = meta.get("prompt") or {}
                    reply.prompt = f"{prompt.get('name')} v{prompt.get('version')}" if prompt else ""
    except httpx.ConnectError:
        raise ChatError(f"cannot connect to {url}: is `agentplane up` running (see --url)?") from None
    except httpx.HTTPError as exc:
        raise ChatError(f"{url}: {type(exc).__name__}: {exc}") from None
    yield reply


def footer(reply: Reply) -> str:
    lines = []
    if reply.sources:
        lines.append("sources:")
        lines += [f"  [{s['n']}] {s['source']} (score {s['score']})" for s in reply.sources]
    elif reply.retrieval == "unavailable":
        lines.append("sources: the knowledge base was unavailable; answered without it")
    usage = reply.usage
    if usage:
        about = [f"model {reply.model}"] + ([f"prompt {reply.prompt}"] if reply.prompt else [])
        lines.append(
            f"tokens: {usage.get('prompt_tokens', 0)} in, {usage.get('completion_tokens', 0)} out, "
            f"{usage.get('total_tokens', 0)} total ({', '.join(about)})"
        )
    return "\n".join(lines)


def ask(
    client: httpx.Client,
    url: str,
    key: str,
    agent: str,
    messages: list[dict[str, str]],
    out: TextIO,
    conversation: str | None = None,
) -> Reply:
    """Stream one answer to `out`, then its sources and usage."""
    reply = Reply()
    for item in stream_chat(client, url, key, agent, messages, conversation):
        if isinstance(item, Reply):
            reply = item
        else:
            out.write(item)
            out.flush()
    out.write("\n")
    text = footer(reply)
    if text:
        out.write("\n" + text + "\n")
    out.flush()
    return reply


def chat(
    target: str,
    question: str | None,
    *,
    base_url: str,
    state: Path,
    key: str | None,
    out: TextIO,
    err: TextIO,
    read: Callable[[str], str] = input,
) -> int:
    """Run `agentplane chat`; returns the exit code."""
    tenant, slash, agent = target.partition("/")
    if not slash or not tenant or not agent:
        err.write(f"error: {target!r}: expected TENANT/AGENT, for example acme/support-bot\n")
        return 2
    url = f"{base_url.rstrip('/')}/t/{tenant}/a/{agent}/v1"
    try:
        api_key = find_key(tenant, state, key)
    except ChatError as exc:
        err.write(f"error: {exc}\n")
        return 1
    with httpx.Client(timeout=httpx.Timeout(120.0, connect=5.0)) as client:
        if question is not None:
            try:
                ask(client, url, api_key, agent, [{"role": "user", "content": question}], out)
            except ChatError as exc:
                err.write(f"\nerror: {exc}\n")
                return 1
            return 0
        out.write(f"Chatting with {tenant}/{agent} at {url}. {HELP}\n")
        messages: list[dict[str, str]] = []
        conversation = uuid.uuid4().hex
        while True:
            try:
                line = read("\nyou> ").strip()
            except (EOFError, KeyboardInterrupt):
                out.write("\n")
                return 0
            if not line:
                continue
            if line in ("/exit", "/quit"):
                return 0
            if line == "/reset":
                messages.clear()
                conversation = uuid.uuid4().hex
                out.write("(new conversation)\n")
                continue
            if line.startswith("/"):
                out.write(f"unknown command {line}; {HELP}\n")
                continue
            messages.append({"role": "user", "content": line})
            out.write(f"{agent}> ")
            try:
                reply = ask(client, url, api_key, agent, messages, out, conversation)
            except ChatError as exc:
                messages.pop()
                err.write(f"\nerror: {exc}\n")
                continue
            messages.append({"role": "assistant", "content": reply.text})
