"""CEL as the Kubernetes API server evaluates it, offline: Google's CEL engine plus the Kubernetes
extension functions the policies use.

The engine is `cel-expr-python` (cel-cpp) with its strings and optional-types extensions. The
Kubernetes libraries (`k8s.io/apiserver/pkg/cel/library`) are not part of it; the functions the
policies in `policies/` call are implemented here with the same results and the same errors:

- quantities: `quantity(string)`, `isQuantity(string)`, and on a quantity `compareTo`,
  `isLessThan`, `isGreaterThan`, `sign`, `isInteger`, `asInteger` (Kubernetes' `ParseQuantity`;
  values are exact and rounded up to nano units, as the API server stores them);
- URLs: `url(string)`, `isURL(string)`, and on a URL `getScheme`, `getHost`, `getHostname`,
  `getPort` (Go's `url.ParseRequestURI`, which Kubernetes uses).

A new Kubernetes function a policy needs is added here, with a test against Kubernetes'
documented results, before the policy uses it; an undeclared one is a compile error, so a policy
cannot silently depend on something only the API server has.

Quantity and URL values are protobuf messages of package `agentplane.cel.kubernetes` (the engine
takes no other opaque values); policies must not construct them or read their fields, which
the API server does not have.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any, Protocol, cast

from cel_expr_python import cel
from cel_expr_python.ext import ext_optional, ext_strings
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "CelError",
    "CompiledExpression",
    "GoUrl",
    "compile_expression",
    "parse_quantity",
    "parse_request_uri",
]

_PACKAGE = "agentplane.cel.kubernetes"


class CelError(Exception):
    """A CEL expression that does not compile (syntax, undeclared names, types) or whose evaluation
    failed (no such key, no matching overload, a bad quantity or URL); the message says which."""


# --- Kubernetes quantities (k8s.io/apimachinery/pkg/api/resource) --------------------------------

_QUANTITY = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?([eEinumkKMGTP]*[-+]?[0-9]*)$")
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_NANO = Fraction(1, 10**9)


@lru_cache(maxsize=4096)  # specs repeat the same few quantities
def parse_quantity(text: str) -> Fraction:
    """The exact value of a Kubernetes quantity (`500m`, `1Gi`, `1e3`), rounded away from zero to
    nano units as the API server does; `ValueError` for what `resource.ParseQuantity` refuses."""
    match = _QUANTITY.match(text)
    if not text or match is None:
        raise ValueError(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    sign, whole, fraction, suffix = match.groups()
    if not whole and not fraction:
        raise ValueError("unable to parse quantity's numeric part")
    number = Fraction(int(whole or "0")) + (Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0)
    if suffix in _BINARY:
        number *= 2 ** _BINARY[suffix]
    elif suffix in _DECIMAL:
        number *= Fraction(10) ** _DECIMAL[suffix]
    elif len(suffix) > 1 and suffix[0] in "eE" and re.fullmatch(r"[-+]?[0-9]+", suffix[1:]):
        number *= Fraction(10) ** int(suffix[1:])
    else:
        raise ValueError(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    if number.denominator != 1 and (number / _NANO).denominator != 1:
        nanos = number / _NANO
        number = Fraction(-(-nanos.numerator // nanos.denominator)) * _NANO  # away from zero (positive)
    return -number if sign == "-" else number


# --- URLs (Go's net/url ParseRequestURI and Parse, as k8s.io/apiserver/pkg/cel/library/urls.go) ----


class GoUrl:
    """What Go's `net/url` keeps of a parsed URL that the CEL URL functions read."""

    __slots__ = ("host", "opaque", "path", "scheme")

    def __init__(self, scheme: str, host: str, path: str, opaque: str) -> None:
        self.scheme = scheme
        self.host = host
        self.path = path
        self.opaque = opaque


_HOST_OK = set(string.ascii_letters + string.digits + "-_.~" + "!$&'()*+,;=:[]<>\"")
_USERINFO_OK = set(string.ascii_letters + string.digits + "-._:~!$&'()*+,;=%@")
_HEX = set(string.hexdigits)


def _valid_optional_port(port: str) -> bool:
    return port == "" or (port[0] == ":" and all(c in string.digits for c in port[1:]))


def _unescape(text: str, *, host: bool) -> str:
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            escape = text[i : i + 3]
            if len(escape) < 3 or escape[1] not in _HEX or escape[2] not in _HEX:
                raise ValueError(f'invalid URL escape "{escape}"')
            if host and int(escape[1], 16) < 8 and escape != "%25":
                raise ValueError(f'invalid URL escape "{escape}"')
            out.append(int(escape[1:], 16))
            i += 3
            continue
        if host and ord(c) < 0x80 and c not in _HOST_OK:
            raise ValueError(f'invalid character "{c}" in host name')
        out.extend(c.encode())
        i += 1
    return out.decode(errors="replace")


def _parse_host(host: str) -> str:
    if host.startswith("["):
        end = host.rfind("]")
        if end < 0:
            raise ValueError("missing ']' in host")
        if not _valid_optional_port(host[end + 1 :]):
            raise ValueError(f'invalid port "{host[end + 1 :]}" after host')
    elif (colon := host.rfind(":")) != -1 and not _valid_optional_port(host[colon:]):
        raise ValueError(f'invalid port "{host[colon:]}" after host')
    return _unescape(host, host=True)


def _scheme(raw: str) -> tuple[str, str]:
    for i, c in enumerate(raw):
        if c in string.ascii_letters:
            continue
        if c in string.digits + "+-.":
            if i == 0:
                return "", raw
            continue
        if c == ":":
            if i == 0:
                raise ValueError("missing protocol scheme")
            return raw[:i], raw[i + 1 :]
        return "", raw
    return "", raw


def _go_parse(raw: str, *, via_request: bool) -> GoUrl:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ValueError("net/url: invalid control character in URL")
    if raw == "" and via_request:
        raise ValueError("empty url")
    if raw == "*":
        return GoUrl("", "", "*", "")
    scheme, rest = _scheme(raw)
    scheme = scheme.lower()
    # a lone trailing "?" is Go's ForceQuery; otherwise the query is cut off
    rest = rest[:-1] if rest.endswith("?") and rest.count("?") == 1 else rest.partition("?")[0]
    if not rest.startswith("/"):
        if scheme:
            return GoUrl(scheme, "", "", rest)
        if via_request:
            raise ValueError("invalid URI for request")
        if ":" in rest.partition("/")[0]:
            raise ValueError("first path segment in URL cannot contain colon")
    host = ""
    if (scheme or (not via_request and not rest.startswith("///"))) and rest.startswith("//"):
        authority, slash, path = rest[2:].partition("/")
        rest = slash + path
        userinfo, at, hostport = authority.rpartition("@")
        if at:
            if not all(c in _USERINFO_OK for c in userinfo):
                raise ValueError("net/url: invalid userinfo")
            _unescape(userinfo, host=False)
        host = _parse_host(hostport)
    return GoUrl(scheme, host, _unescape(rest, host=False), "")


def parse_request_uri(raw: str) -> GoUrl:
    """Go's `url.ParseRequestURI` (an absolute URI or an absolute path), then `url.Parse` as
    Kubernetes' `url()` does; `ValueError` with Go's reason for what it refuses."""
    _go_parse(raw, via_request=True)
    return _go_parse(raw.partition("#")[0], via_request=False)


def _split_host_port(host: str) -> tuple[str, str]:
    colon = host.rfind(":")
    port = ""
    if colon != -1 and _valid_optional_port(host[colon:]):
        host, port = host[:colon], host[colon + 1 :]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


# --- the engine -----------------------------------------------------------------------------------


class _Message(Protocol):
    value: str


def _message_classes() -> tuple[descriptor_pool.DescriptorPool, Callable[..., Any], Callable[..., Any]]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="agentplane/cel/kubernetes.proto", package=_PACKAGE, syntax="proto3"
    )
    for name in ("Quantity", "URL"):
        message = proto.message_type.add(name=name)
        message.field.add(
            name="value",
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    quantity = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.Quantity"))
    url = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.URL"))
    return pool, quantity, url


@lru_cache(maxsize=1)
def _kubernetes() -> tuple[descriptor_pool.DescriptorPool, list[cel.FunctionDecl]]:
    """The descriptor pool and function declarations of the Kubernetes libraries (built once)."""
    pool, quantity_message, url_message = _message_classes()
    quantity_type = cel.Type(f"{_PACKAGE}.Quantity")
    url_type = cel.Type(f"{_PACKAGE}.URL")
    string_type, bool_type, int_type = cel.Type.STRING, cel.Type.BOOL, cel.Type.INT

    # A quantity message holds its exact value as "numerator/denominator", so that `==` between
    # quantities is Kubernetes' (semantic: quantity("1Gi") == quantity("1024Mi")).
    @lru_cache(maxsize=4096)
    def exact(text: str) -> str:
        value = parse_quantity(text)
        return f"{value.numerator}/{value.denominator}"

    def quantity(text: str) -> object:
        return quantity_message(value=exact(text))

    @lru_cache(maxsize=4096)
    def fraction(text: str) -> Fraction:
        return Fraction(text)

    def value_of(message: _Message) -> Fraction:
        return fraction(message.value)

    def is_quantity(text: str) -> bool:
        try:
            parse_quantity(text)
        except ValueError:
            return False
        return True

    def compare(a: _Message, b: _Message) -> int:
        x, y = value_of(a), value_of(b)
        return (x > y) - (x < y)

    def sign(a: _Message) -> int:
        x = value_of(a)
        return (x > 0) - (x < 0)

    def is_integer(a: _Message) -> bool:  # resource.Quantity.AsInt64: whole and within int64
        x = value_of(a)
        return x.denominator == 1 and -(2**63) <= x.numerator < 2**63

    def as_integer(a: _Message) -> int:
        if not is_integer(a):
            raise ValueError("cannot convert value to integer")
        return value_of(a).numerator

    def url(text: str) -> object:
        try:
            parse_request_uri(text)
        except ValueError as error:
            raise ValueError(f"URL parse error during conversion from string: {error}") from None
        return url_message(value=text)

    def is_url(text: str) -> bool:
        try:
            parse_request_uri(text)
        except ValueError:
            return False
        return True

    def go_url(message: _Message) -> GoUrl:
        return parse_request_uri(message.value)

    def overload(
        name: str,
        returns: cel.Type,
        params: Sequence[cel.Type],
        impl: Callable[..., Any],
        *,
        member: bool = False,
    ) -> cel.FunctionDecl:
        kind = "_".join(p.name().rsplit(".", 1)[-1].lower() for p in params)
        return cel.FunctionDecl(
            name, [cel.Overload(f"{kind}_{name}", returns, list(params), is_member=member, impl=impl)]
        )

    q, u = quantity_type, url_type
    functions = [
        overload("quantity", q, [string_type], quantity),
        overload("isQuantity", bool_type, [string_type], is_quantity),
        overload("compareTo", int_type, [q, q], compare, member=True),
        overload("isLessThan", bool_type, [q, q], lambda a, b: compare(a, b) < 0, member=True),
        overload("isGreaterThan", bool_type, [q, q], lambda a, b: compare(a, b) > 0, member=True),
        overload("sign", int_type, [q], sign, member=True),
        overload("isInteger", bool_type, [q], is_integer, member=True),
        overload("asInteger", int_type, [q], as_integer, member=True),
        overload("url", u, [string_type], url),
        overload("isURL", bool_type, [string_type], is_url),
        overload("getScheme", string_type, [u], lambda a: go_url(a).scheme, member=True),
        overload("getHost", string_type, [u], lambda a: go_url(a).host, member=True),
        overload("getHostname", string_type, [u], lambda a: _split_host_port(go_url(a).host)[0], member=True),
        overload("getPort", string_type, [u], lambda a: _split_host_port(go_url(a).host)[1], member=True),
    ]
    return pool, functions


@lru_cache(maxsize=16)
def _environment(variables: tuple[str, ...]) -> cel.Env:
    pool, functions = _kubernetes()
    return cel.NewEnv(
        descriptor_pool=pool,
        variables=dict.fromkeys(variables, cel.Type.DYN),
        extensions=[ext_strings.ExtStrings(), ext_optional.ExtOptional()],
        functions=functions,
    )


def _plain(value: object) -> object:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "DESCRIPTOR"):
        return cast("_Message", value).value
    return value


def _reason(error: Exception) -> str:
    """The engine's message without its status-code prefix and trailer."""
    text = str(error).strip()
    text = re.sub(r"\s*\[[A-Z_]+\]$", "", text)
    return re.sub(r"^[A-Z_]+: ", "", text)


class CompiledExpression:
    """A CEL expression type-checked against named variables (each of any type), ready to evaluate."""

    __slots__ = ("_program", "expression", "variables")

    def __init__(self, expression: str, variables: tuple[str, ...], program: cel.Expression) -> None:
        self.expression = expression
        self.variables = variables
        self._program = program

    def evaluate(self, variables: Mapping[str, object]) -> object:
        """The value of the expression for plain Python inputs (dict, list, str, int, float, bool,
        None), as plain Python; `CelError` when evaluation fails or a variable is missing."""
        missing = [name for name in self.variables if name not in variables]
        if missing:
            raise CelError(f"evaluation error in {self.expression!r}: no value for {', '.join(missing)}")
        try:
            result = self._program.eval(data={name: variables[name] for name in self.variables})
        except RuntimeError as error:
            raise CelError(f"evaluation error in {self.expression!r}: {_reason(error)}") from None
        if result.type() == cel.Type.ERROR:
            raise CelError(f"evaluation error in {self.expression!r}: {_reason(Exception(result.value()))}")
        return _plain(result.plain_value())

    def __repr__(self) -> str:
        return f"CompiledExpression({self.expression!r})"


@lru_cache(maxsize=1024)
def _compile(expression: str, variables: tuple[str, ...]) -> CompiledExpression:
    try:
        program = _environment(variables).compile(expression)
    except RuntimeError as error:
        raise CelError(f"compile error in {expression!r}: {_reason(error)}") from None
    return CompiledExpression(expression, variables, program)


def compile_expression(expression: str, variables: Sequence[str]) -> CompiledExpression:
    """Parse and type-check a CEL expression whose free variables are `variables` (each `dyn`), with
    the strings and optional-types extensions and the Kubernetes functions above; `CelError` with
    the engine's reason and position when it does not compile. Cached by expression and variables."""
    return _compile(expression, tuple(sorted(set(variables))))
