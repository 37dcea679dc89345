"""A YAML reader for spec files that remembers where every value came from and cannot be tricked.

It builds values from libyaml's event stream with an explicit stack (no recursion, so deep
nesting cannot crash it), records the line and column of every key and item, refuses duplicate
keys, and bounds file size, nesting depth and alias expansion (billion laughs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml

from agentplane_platform.jsontypes import JsonObject, JsonValue

from ._problems import Position, Problem, dotted

MAX_FILE_BYTES = 2 * 1024 * 1024
"""Kubernetes refuses objects over 1.5 MiB; a spec file larger than this is not a spec."""
MAX_DEPTH = 64
MAX_NODES = 100_000
"""Values per document, counting every expansion of an alias."""

Path_ = tuple[str | int, ...]

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_SCALAR_TAGS = {_STR, _INT, _FLOAT, _BOOL, _NULL, "tag:yaml.org,2002:timestamp"}

_resolver = yaml.resolver.Resolver()
_IMPLICIT_FIRST = frozenset(k for k in _resolver.yaml_implicit_resolvers if k)
"""First characters of plain scalars that may resolve to something other than a string."""
_constructor = yaml.constructor.SafeConstructor()
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(slots=True)
class Document:
    """One YAML document of a file, with the position of each of its values."""

    file: str
    index: int
    data: Any
    start: Position
    positions: dict[Path_, Position] = field(default_factory=dict)

    def position(self, path: Path_) -> Position:
        """Where the value at `path` is, or the nearest enclosing value that has a position."""
        while path:
            found = self.positions.get(path)
            if found is not None:
                return found
            path = path[:-1]
        return self.start


class _Mark(Protocol):
    """Where the parser is (PyYAML's pure and C marks alike); 0-based."""

    @property
    def line(self) -> int: ...

    @property
    def column(self) -> int: ...


class _Budget(Exception):
    def __init__(self, message: str, mark: _Mark | None) -> None:
        super().__init__(message)
        self.mark = mark


def _pos(mark: _Mark | None) -> Position:
    return Position(mark.line + 1, mark.column + 1) if mark is not None else Position(1, 1)


def _scalar(event: yaml.ScalarEvent) -> JsonValue:
    value: str = event.value
    tag = event.tag
    if tag is None or tag == "!":
        if event.style or not event.implicit[0] or (value and value[0] not in _IMPLICIT_FIRST):
            return value
        tag = _resolver.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
    elif tag not in _SCALAR_TAGS:
        raise _Budget(f"unsupported YAML tag {tag!r} (plain YAML values only)", event.start_mark)
    if tag == _STR or tag == "tag:yaml.org,2002:timestamp":
        return value
    if tag == _NULL:
        return None
    node = yaml.ScalarNode(tag, value)
    try:
        if tag == _BOOL:
            return _constructor.construct_yaml_bool(node)
        if tag == _INT:
            return _constructor.construct_yaml_int(node)
        if tag == _FLOAT:
            return _constructor.construct_yaml_float(node)
    except ValueError as exc:
        raise _Budget(f"{value!r} is not a valid {tag.rsplit(':', 1)[-1]}", event.start_mark) from exc
    return value


def _size(value: JsonValue) -> int:
    """Number of values in a constructed value (aliases count their whole size on each use)."""
    count = 0
    pending = [value]
    while pending:
        item = pending.pop()
        count += 1
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        if count > MAX_NODES:
            break
    return count


class _Frame:
    __slots__ = ("anchor", "container", "key", "key_mark", "path", "start_mark")

    def __init__(
        self,
        container: JsonObject | list[JsonValue],
        path: Path_,
        anchor: str | None,
        start_mark: _Mark | None,
    ) -> None:
        self.container = container
        self.path = path
        self.anchor = anchor
        self.start_mark = start_mark
        self.key: str | None = None
        self.key_mark: _Mark | None = None


def read_documents(text: str, file: str) -> tuple[list[Document], list[Problem]]:
    """Every document of a YAML stream, and the problems that stopped any of it being read."""
    documents: list[Document] = []
    problems: list[Problem] = []
    stack: list[_Frame] = []
    anchors: dict[str, JsonValue] = {}
    current: Document | None = None
    nodes = 0

    def place(value: JsonValue, mark: _Mark | None) -> None:
        """Put a finished value into its parent (or make it the document's root)."""
        assert current is not None
        if not stack:
            current.data = value
            return
        frame = stack[-1]
        if isinstance(frame.container, list):
            path = (*frame.path, len(frame.container))
            current.positions[path] = _pos(mark)
            frame.container.append(value)
            return
        key = frame.key
        assert key is not None
        path = (*frame.path, key)
        if key in frame.container:
            first = current.positions.get(path)
            where = f" (first defined at line {first.line})" if first else ""
            problems.append(
                Problem(file, _pos(frame.key_mark), f"duplicate key {key!r}{where}", path=dotted(path))
            )
        else:
            current.positions[path] = _pos(frame.key_mark)
            frame.container[key] = value
        frame.key = None

    try:
        for event in yaml.parse(text, Loader=_Loader):
            if isinstance(event, yaml.DocumentStartEvent):
                current = Document(file, len(documents), None, _pos(event.start_mark))
                anchors.clear()
                nodes = 0
                continue
            if isinstance(event, yaml.DocumentEndEvent):
                assert current is not None
                documents.append(current)
                current = None
                continue
            if isinstance(event, yaml.StreamStartEvent | yaml.StreamEndEvent):
                continue
            assert current is not None
            frame = stack[-1] if stack else None
            is_key = frame is not None and isinstance(frame.container, dict) and frame.key is None
            if isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
                if isinstance(event, yaml.AliasEvent):
                    if event.anchor not in anchors:
                        raise _Budget(f"unknown alias *{event.anchor}", event.start_mark)
                    value = anchors[event.anchor]
                    nodes += _size(value)
                else:
                    value = _scalar(event)
                    nodes += 1
                    if event.anchor is not None:
                        anchors[event.anchor] = value
                if nodes > MAX_NODES:
                    raise _Budget(
                        f"document expands to more than {MAX_NODES} values (alias bomb?)", event.start_mark
                    )
                if is_key:
                    assert frame is not None
                    if isinstance(value, dict | list):
                        raise _Budget("mapping keys must be plain scalars", event.start_mark)
                    # Keys are taken as written: `on:` is the key "on", not True.
                    frame.key = value if isinstance(value, str) else str(getattr(event, "value", value))
                    frame.key_mark = event.start_mark
                else:
                    place(value, event.start_mark)
                continue
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                if is_key:
                    raise _Budget("mapping keys must be plain scalars", event.start_mark)
                if event.tag not in (None, "!", _MAP, _SEQ):
                    raise _Budget(
                        f"unsupported YAML tag {event.tag!r} (plain YAML values only)", event.start_mark
                    )
                if len(stack) >= MAX_DEPTH:
                    raise _Budget(f"values nested deeper than {MAX_DEPTH} levels", event.start_mark)
                nodes += 1
                container: JsonObject | list[JsonValue] = (
                    {} if isinstance(event, yaml.MappingStartEvent) else []
                )
                if frame is None:
                    path: Path_ = ()
                elif isinstance(frame.container, list):
                    path = (*frame.path, len(frame.container))
                else:
                    assert frame.key is not None
                    path = (*frame.path, frame.key)
                stack.append(_Frame(container, path, event.anchor, event.start_mark))
                current.positions.setdefault(path, _pos(event.start_mark))
                continue
            if isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                done = stack.pop()
                if done.anchor is not None:
                    anchors[done.anchor] = done.container
                place(done.container, done.start_mark)
    except _Budget as exc:
        problems.append(Problem(file, _pos(exc.mark), str(exc)))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _pos(mark) if mark is not None else Position(1, 1)
        what = exc.problem or str(exc)
        if exc.context:
            what = f"{exc.context}: {what}"
        problems.append(Problem(file, where, f"invalid YAML: {what}"))
    except yaml.YAMLError as exc:
        problems.append(Problem(file, Position(1, 1), f"invalid YAML: {exc}"))
    return documents, problems


def decode(data: bytes, file: str) -> tuple[str | None, Problem | None]:
    """The text of a spec file, or why it is not one (binary, too large, not UTF-8)."""
    if len(data) > MAX_FILE_BYTES:
        return None, Problem(
            file,
            Position(1, 1),
            f"file is {len(data) / 1024 / 1024:.1f} MiB; spec files are limited to "
            f"{MAX_FILE_BYTES // 1024 // 1024} MiB (Kubernetes objects cannot exceed 1.5 MiB)",
        )
    if b"\0" in data:
        return None, Problem(file, Position(1, 1), "binary file, not YAML (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        return None, Problem(
            file, Position(line, column), f"not UTF-8 text: invalid byte 0x{data[exc.start]:02x}"
        )
