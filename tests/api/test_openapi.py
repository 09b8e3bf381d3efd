"""The served OpenAPI document, and a schema-driven fuzz test against the running server.

Requests are generated from the document itself (valid-looking bodies built from each request
schema, random JSON, and random path ids and query strings); every answer must be a status the
document lists for that operation, never a 500, and its body must validate against the schema
the document gives for that status, bounds and patterns included. The validator below covers
the JSON Schema subset pydantic emits; it is small on purpose, so a construct it does not know
fails loudly.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.routing import API
from tests.helpers import Client

PREFIX = "/api/v1"


async def _document(client: Client) -> dict[str, Any]:
    reply = await client.get("/openapi.json", key=None)
    assert reply.status == 200
    return dict(reply.body)


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        kind = schema["$ref"].split("/")[2]
        schema = doc["components"][kind][name]
    return schema


def validate(doc: dict[str, Any], schema: dict[str, Any], value: Any, path: str = "$") -> None:
    schema = _resolve(doc, schema)
    known = {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "anyOf",
        "const",
        "enum",
        "format",
        "title",
        "description",
        "default",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "maxItems",
        "minItems",
        "pattern",
        "exclusiveMinimum",
        "exclusiveMaximum",
    }
    unknown = set(schema) - known
    assert not unknown, f"validator does not know {unknown} at {path}"
    if "anyOf" in schema:
        errors = []
        for option in schema["anyOf"]:
            try:
                validate(doc, option, value, path)
                return
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{path}: matches no anyOf option: {errors}")
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != const {schema['const']!r}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in {schema['enum']}"
    kind = schema.get("type")
    checks = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }
    if kind is not None:
        assert checks[kind](value), f"{path}: {value!r} is not {kind}"
    if kind == "string" and schema.get("format") == "date-time":
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    _check_bounds(schema, value, path)
    if kind == "object":
        for name in schema.get("required", []):
            assert name in value, f"{path}: missing {name}"
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                validate(doc, props[name], item, f"{path}.{name}")
            elif extra is False:
                raise AssertionError(f"{path}: unexpected property {name}")
            elif isinstance(extra, dict):
                validate(doc, extra, item, f"{path}.{name}")
    if kind == "array":
        for i, item in enumerate(value):
            validate(doc, schema.get("items", {}), item, f"{path}[{i}]")


def _check_bounds(schema: dict[str, Any], value: Any, path: str) -> None:
    """The bounds JSON Schema puts on numbers, strings and arrays; each applies only to a
    value of its own type, as the standard says."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            assert value >= schema["minimum"], f"{path}: {value!r} < minimum {schema['minimum']}"
        if "maximum" in schema:
            assert value <= schema["maximum"], f"{path}: {value!r} > maximum {schema['maximum']}"
        if "exclusiveMinimum" in schema:
            bound = schema["exclusiveMinimum"]
            assert value > bound, f"{path}: {value!r} <= exclusiveMinimum {bound}"
        if "exclusiveMaximum" in schema:
            bound = schema["exclusiveMaximum"]
            assert value < bound, f"{path}: {value!r} >= exclusiveMaximum {bound}"
    if isinstance(value, str):
        if "minLength" in schema:
            assert len(value) >= schema["minLength"], f"{path}: shorter than minLength"
        if "maxLength" in schema:
            assert len(value) <= schema["maxLength"], f"{path}: longer than maxLength"
        if "pattern" in schema:
            pattern = schema["pattern"]
            assert re.search(pattern, value), f"{path}: {value!r} does not match {pattern!r}"
    if isinstance(value, list):
        if "minItems" in schema:
            assert len(value) >= schema["minItems"], f"{path}: fewer than minItems"
        if "maxItems" in schema:
            assert len(value) <= schema["maxItems"], f"{path}: more than maxItems"


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"type": "integer", "minimum": 1}, 1, 0),
        ({"type": "integer", "maximum": 100}, 100, 101),
        ({"type": "number", "exclusiveMinimum": 0}, 0.5, 0),
        ({"type": "number", "exclusiveMaximum": 1}, 0.5, 1),
        ({"type": "string", "minLength": 2}, "ab", "a"),
        ({"type": "string", "maxLength": 3}, "abc", "abcd"),
        ({"type": "string", "pattern": "^whsec_"}, "whsec_x", "x_whsec_"),
        ({"type": "array", "minItems": 1}, [1], []),
        ({"type": "array", "maxItems": 2}, [1, 2], [1, 2, 3]),
        ({"anyOf": [{"type": "string", "maxLength": 1}, {"type": "null"}]}, None, "ab"),
    ],
)
def test_the_validator_holds_values_to_their_bounds(schema: Any, good: Any, bad: Any) -> None:
    validate({}, schema, good)
    with pytest.raises(AssertionError):
        validate({}, schema, bad)


async def test_document_lists_every_operation(client: Client) -> None:
    doc = await _document(client)
    assert doc["openapi"] == "3.1.0"
    served = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    registered = {(op.method, PREFIX + op.path) for op in API.operations}
    assert served == registered
    for schema in doc["components"]["schemas"].values():
        text = str(schema)
        for ref in re.findall(r"#/components/schemas/(\w+)", text):
            assert ref in doc["components"]["schemas"]
    issue = {
        ("POST", "/campaigns"),
        ("GET", "/campaigns"),
        ("GET", "/campaigns/{id}"),
        ("PATCH", "/campaigns/{id}"),
        ("POST", "/campaigns/{id}/send"),
        ("POST", "/campaigns/{id}/pause"),
        ("POST", "/campaigns/{id}/resume"),
        ("POST", "/campaigns/{id}/cancel"),
        ("POST", "/emails/send"),
        ("POST", "/emails/send-bulk"),
        ("POST", "/contacts"),
        ("GET", "/contacts"),
        ("GET", "/contacts/{id}"),
        ("PATCH", "/contacts/{id}"),
        ("DELETE", "/contacts/{id}"),
        ("GET", "/suppressions"),
        ("POST", "/suppressions"),
        ("DELETE", "/suppressions/{email}"),
        ("GET", "/analytics/campaigns/{id}"),
        ("POST", "/webhooks"),
        ("GET", "/webhooks"),
        ("DELETE", "/webhooks/{id}"),
        ("POST", "/webhooks/{id}/test"),
        ("GET", "/messages/{id}"),
        ("POST", "/auth/login"),
        ("GET", "/api-keys"),
        ("DELETE", "/api-keys/{id}"),
    }
    assert {(m, PREFIX + p) for m, p in issue} <= served


async def test_document_matches_a_real_response(client: Client) -> None:
    doc = await _document(client)
    reply = await client.post("/contacts", json={"email": "a@dest.test", "tags": ["x"]})
    schema = doc["paths"][f"{PREFIX}/contacts"]["post"]["responses"]["201"]
    validate(doc, schema["content"]["application/json"]["schema"], reply.body)
    bad = await client.post("/contacts", json={"email": "nope"})
    schema = doc["paths"][f"{PREFIX}/contacts"]["post"]["responses"]["422"]
    validate(doc, schema["content"]["application/json"]["schema"], bad.body)
    with pytest.raises(AssertionError):
        validate(doc, schema["content"]["application/json"]["schema"], reply.body)


# ---------------------------------------------------------------------------------------------
# Generating requests from the schemas

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
_emails = st.sampled_from(["ann@dest.test", "news@acme.test", "x@y", "", "a@b.test\r\n"])


def from_schema(
    doc: dict[str, Any], schema: dict[str, Any], depth: int = 0
) -> st.SearchStrategy[Any]:
    schema = _resolve(doc, schema)
    if depth > 4:
        return _json
    if "anyOf" in schema:
        return st.one_of([from_schema(doc, s, depth + 1) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        if schema.get("format") == "email":
            return _emails
        if schema.get("format") == "date-time":
            return st.sampled_from(["2031-01-01T00:00:00Z", "2020-01-01T00:00:00+02:00", "soon"])
        return st.text(max_size=min(schema.get("maxLength", 20), 20)) | st.sampled_from(
            ["{{name}}", "{a|b}", "<p>hi</p>", "email.*", "https://example.com/h", "7d"]
        )
    if kind == "integer":
        return st.integers(min_value=-2, max_value=2**64) | st.integers(0, 5)
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=1e6)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(from_schema(doc, schema.get("items", {}), depth + 1), max_size=3)
    if kind == "object" and "properties" in schema:
        props = schema["properties"]
        required = set(schema.get("required", []))
        fields = {name: from_schema(doc, sub, depth + 1) for name, sub in props.items()}
        return st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    if kind == "object":
        return st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)
    return _json


def _collect(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    found: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(value: Any) -> None:
        found.append(value)

    draw()
    return found


async def test_fuzz_from_the_document(client: Client, make_key: Any) -> None:
    """No 500s, only documented statuses, and every body valid against its documented schema."""
    big = client.with_key(await make_key("fuzz", tier="enterprise", test=True))
    doc = await _document(big)
    made = await big.post(
        "/campaigns",
        json={
            "name": "n",
            "subject": "s",
            "content": {"text": "t"},
            "recipients": [{"email": "a@dest.test"}],
        },
    )
    ids = st.sampled_from([str(made.data["id"]), "1", "2", "0", "-1", "x", "99999999999999999999"])
    checked = 0
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body_schema = (
                op.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            bodies = from_schema(doc, body_schema) | _json if body_schema else st.none()
            query = st.fixed_dictionaries(
                {},
                optional={
                    p["name"]: st.text(max_size=6) | st.sampled_from(["1", "100", "7d", "all"])
                    for p in op["parameters"]
                    if p["in"] == "query"
                },
            )
            cases = _collect(st.tuples(bodies, query, ids, st.text(max_size=6)), 30)
            for body, params, some_id, word in cases:
                url = path[len(PREFIX) :].replace("{id}", some_id).replace("{email}", word or "x")
                if path.endswith("/test") or path.endswith("/auth/login"):
                    continue  # network and argon2 cost: covered by their own tests
                if body is not None:
                    reply = await big.request(method.upper(), url, body, params=params)
                else:
                    reply = await big.request(method.upper(), url, params=params)
                assert reply.status != 500, (method, url, body, reply.body)
                responses = op["responses"]
                assert str(reply.status) in responses, (method, url, body, reply.status, reply.body)
                schema = responses[str(reply.status)]["content"]["application/json"]["schema"]
                validate(doc, schema, reply.body, f"{method} {url}")
                checked += 1
    assert checked > 200
