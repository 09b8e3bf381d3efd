"""The envelope and the error shape, for every way a request can go wrong."""

from __future__ import annotations

from typing import Any

import pytest

from api.routing import API, Call
from tests.helpers import REQUEST_ID, Client, assert_error


async def test_success_envelope(client: Client) -> None:
    reply = await client.get("/campaigns")
    assert reply.status == 200
    assert reply.body["success"] is True
    assert reply.body["data"] == {"items": [], "has_more": False, "next_cursor": None}
    meta = reply.body["meta"]
    assert REQUEST_ID.match(meta["request_id"])
    assert meta["timestamp"].endswith("Z")
    assert reply.headers["Content-Type"].startswith("application/json")


async def test_unknown_route_and_method(client: Client) -> None:
    assert_error(await client.get("/nothing-here"), 404, "NOT_FOUND")
    reply = await client.request("PUT", "/campaigns")
    assert_error(reply, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in reply.headers["Allow"]


async def test_malformed_json(client: Client) -> None:
    reply = await client.post(
        "/contacts", data=b'{"email": "a@b.test",', headers={"Content-Type": "application/json"}
    )
    assert_error(reply, 400, "INVALID_JSON")


async def test_body_must_be_an_object(client: Client) -> None:
    reply = await client.post("/contacts", json=["a@b.test"])
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"] == [{"field": "body", "message": "must be a JSON object"}]


async def test_wrong_content_type(client: Client) -> None:
    reply = await client.post(
        "/contacts", data=b"email=a@b.test", headers={"Content-Type": "text/plain"}
    )
    assert_error(reply, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_missing_body(client: Client) -> None:
    assert_error(await client.post("/contacts"), 400, "INVALID_JSON")


async def test_oversized_body(start_api: Any, http: Any, key: str) -> None:
    server = await start_api(max_body=1024)
    small = Client(http, server.url + "/api/v1", key)
    reply = await small.post("/contacts", json={"email": "a@b.test", "company": "x" * 5000})
    error = assert_error(reply, 413, "PAYLOAD_TOO_LARGE")
    assert "1024" in error["message"]


async def test_validation_details_name_fields(client: Client) -> None:
    reply = await client.post("/contacts", json={"email": "not-an-email", "tags": ["ok", ""]})
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    fields = {d["field"]: d["message"] for d in error["details"]}
    assert fields["email"] == "Invalid email format"
    assert "tags[1]" in fields


async def test_unknown_fields_are_refused(client: Client) -> None:
    reply = await client.post("/contacts", json={"email": "a@b.test", "nickname": "x"})
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "nickname"


async def test_bad_query_parameters(client: Client) -> None:
    reply = await client.get("/campaigns", params={"limit": "1000"})
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "limit"
    reply = await client.get("/campaigns", params={"cursor": "garbage!"})
    assert assert_error(reply, 422, "VALIDATION_ERROR")["details"][0]["field"] == "cursor"


async def test_ids_out_of_range_are_not_found(client: Client) -> None:
    assert_error(await client.get("/campaigns/99999999999999999999999"), 404, "NOT_FOUND")
    assert_error(await client.get("/campaigns/abc"), 404, "NOT_FOUND")
    assert_error(await client.get("/campaigns/0"), 404, "NOT_FOUND")


@pytest.fixture
def failing_route() -> Any:
    """A route that raises an unexpected exception (registered for this test only)."""

    @API.route("GET", "/__boom", summary="boom", tag="Test", auth=False)
    async def boom(call: Call) -> None:
        raise RuntimeError("secret internals sk_live_ABCDEFGHIJKLmnopqrstuvwxyz0123456789ab")

    yield
    API.operations[:] = [op for op in API.operations if op.path != "/__boom"]


async def test_unknown_errors_are_500_without_stack_trace(
    failing_route: Any, start_api: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_api()
    reply = await Client(http, server.url + "/api/v1", None).get("/__boom")
    error = assert_error(reply, 500, "INTERNAL_ERROR")
    assert "secret internals" not in str(reply.body)
    logged = [r for r in caplog.records if getattr(r, "action", None) == "api_error"]
    assert logged and logged[0].request_id == error["request_id"]  # type: ignore[attr-defined]


async def test_a_nul_character_anywhere_is_a_validation_error(client, pool) -> None:
    # Postgres text and jsonb cannot store U+0000: refused by name, never a 500.
    cases = {
        "detail": {"email": "a@b.test", "reason": "manual", "detail": "bad\u0000"},
        "personalization.x\u0000": {"email": "a@b.test", "reason": "manual"},
    }
    reply = await client.post("/suppressions", json=cases["detail"])
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"] == [{"field": "detail", "message": "must not contain NUL"}]
    reply = await client.post(
        "/emails/send",
        json={
            "to": "a@dest.test",
            "subject": "Hi",
            "content": {"text": "x"},
            "personalization": {"x\u0000": 1},
        },
    )
    error = assert_error(reply, 422, "VALIDATION_ERROR")
    assert error["details"][0]["field"] == "personalization.x\u0000"
    assert await pool.fetchval("SELECT count(*) FROM suppressions") == 0
