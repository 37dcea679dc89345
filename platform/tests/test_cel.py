"""agentplane_platform.cel: the Kubernetes CEL functions offline give Kubernetes' documented results.

The expected values are the examples of k8s.io/apiserver/pkg/cel/library (quantity.go, urls.go)
and of the Kubernetes CEL documentation (kubernetes.io/docs/reference/using-api/cel/).
"""

from __future__ import annotations

import pytest

from agentplane_platform.cel import CelError, compile_expression


def evaluate(expression: str, **variables: object) -> object:
    return compile_expression(expression, list(variables)).evaluate(variables)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("quantity('1Gi').compareTo(quantity('1024Mi'))", 0),
        ("quantity('200M').compareTo(quantity('0.2G'))", 0),
        ("quantity('50k').compareTo(quantity('100k'))", -1),
        ("quantity('1').compareTo(quantity('999m'))", 1),
        ("quantity('1Gi') == quantity('1073741824')", True),
        ("quantity('1Gi') == quantity('1G')", False),
        ("quantity('50M').isLessThan(quantity('100M'))", True),
        ("quantity('100M').isLessThan(quantity('50M'))", False),
        ("quantity('200M').isGreaterThan(quantity('100M'))", True),
        ("quantity('2500m').isGreaterThan(quantity('2'))", True),
        ("quantity('1e3').compareTo(quantity('1k'))", 0),
        ("quantity('1E-3').compareTo(quantity('1m'))", 0),
        ("quantity('.5').compareTo(quantity('500m'))", 0),
        ("quantity('50k').isInteger()", True),
        ("quantity('9999999999999999999999999999999999999G').isInteger()", False),
        ("quantity('50k').asInteger()", 50000),
        ("quantity('50k').sign()", 1),
        ("quantity('-50k').sign()", -1),
        ("quantity('0').sign()", 0),
        # below a nano unit, the API server rounds up (away from zero)
        ("quantity('0.1n').compareTo(quantity('1n'))", 0),
        ("isQuantity('1.3G')", True),
        ("isQuantity('1.3Gi')", True),
        ("isQuantity('10000k')", True),
        ("isQuantity('1,3G')", False),
        ("isQuantity('200K')", False),
        ("isQuantity('Three')", False),
        ("isQuantity('Mi')", False),
        ("isQuantity('1e')", False),
        ("isQuantity('')", False),
    ],
)
def test_quantity_functions_match_kubernetes(expression: str, expected: object) -> None:
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("url('https://user:pass@example.com:80/path?query=val#fragment').getScheme()", "https"),
        ("url('HTTPS://example.com/').getScheme()", "https"),
        ("url('/absolute-path').getScheme()", ""),
        ("url('https://a.example:8443/x').getHost()", "a.example:8443"),
        ("url('https://example.com:80/').getHost()", "example.com:80"),
        ("url('https://example.com/').getHost()", "example.com"),
        ("url('https://[::1]:80/').getHost()", "[::1]:80"),
        ("url('https://[::1]/').getHost()", "[::1]"),
        ("url('/path').getHost()", ""),
        ("url('https://example.com:80/').getHostname()", "example.com"),
        ("url('https://127.0.0.1:80/').getHostname()", "127.0.0.1"),
        ("url('https://[::1]:80/').getHostname()", "::1"),
        ("url('/path').getHostname()", ""),
        ("url('https://example.com:80/').getPort()", "80"),
        ("url('https://example.com/').getPort()", ""),
        ("url('/path').getPort()", ""),
        ("isURL('https://user:pass@example.com:80/path?query=val#fragment')", True),
        ("isURL('/absolute-path')", True),
        ("isURL('mailto:ops@example.com')", True),
        ("isURL('https://a:b:c/')", False),
        ("isURL('../relative-path')", False),
        ("isURL('example.com')", False),
        ("isURL('')", False),
        ("isURL('https://exa mple.com/')", False),
        ("isURL('https://example.com/%zz')", False),
        ("isURL('http://[::1/')", False),
        ("isURL('://example.com')", False),
    ],
)
def test_url_functions_match_kubernetes(expression: str, expected: object) -> None:
    assert evaluate(expression) == expected


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("quantity('4GB')", "quantities must match the regular expression"),
        ("quantity('1.5m').asInteger()", "cannot convert value to integer"),
        ("url('../relative-path')", "URL parse error during conversion from string: invalid URI for request"),
        ("url('https://a:b:c/')", 'invalid port ":c" after host'),
        ("object.spec.missing", 'Key not found in map : "missing"'),
    ],
)
def test_bad_input_is_an_evaluation_error(expression: str, error: str) -> None:
    with pytest.raises(CelError, match="evaluation error") as raised:
        evaluate(expression, object={"spec": {}})
    assert error in str(raised.value)


@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("object.spec.", "Syntax error"),
        ("authorizer.group('x')", "undeclared reference to 'authorizer'"),
        ("quantity(1)", "no matching overload"),
        ("url('https://x/').getEscapedPath()", "undeclared reference to 'getEscapedPath'"),
    ],
)
def test_what_does_not_compile_says_why(expression: str, error: str) -> None:
    with pytest.raises(CelError, match="compile error") as raised:
        compile_expression(expression, ["object"])
    assert error in str(raised.value)


def test_plain_python_in_and_out_with_the_strings_and_optional_extensions() -> None:
    obj = {"spec": {"model": {"name": "Azure/GPT-4o", "fallbacks": ["openai/gpt-4o-mini"]}, "n": 2.5}}
    assert evaluate("object.spec.model.name.lowerAscii().split('/')", object=obj) == ["azure", "gpt-4o"]
    assert evaluate("object.spec.model.fallbacks.map(f, f.split('/')[0]).join(',')", object=obj) == "openai"
    assert evaluate("object.spec.?runtime.?replicas.orValue(1)", object=obj) == 1
    assert evaluate("object.spec.n * 2.0", object=obj) == 5.0
    assert evaluate("{'a': [1, null]}") == {"a": [1, None]}


def test_a_missing_variable_is_an_error_not_a_crash() -> None:
    compiled = compile_expression("object.a == params.b", ["object", "params"])
    with pytest.raises(CelError, match="no value for params"):
        compiled.evaluate({"object": {"a": 1}})
    assert compile_expression("object.a == params.b", ["params", "object"]) is compiled  # cached
