"""Contacts and suppressions."""

from __future__ import annotations

import asyncpg

from tests.helpers import Client, assert_error


async def test_contact_crud(client: Client) -> None:
    made = await client.post(
        "/contacts",
        json={
            "email": "Ann@Dest.test",
            "first_name": "Ann",
            "company": "Dest",
            "custom_fields": {"plan": "pro", "seats": 5},
            "tags": ["lead", "vip", "lead"],
        },
    )
    assert made.status == 201
    contact = made.data
    assert contact["email"] == "ann@dest.test" and contact["tags"] == ["lead", "vip"]
    path = f"/contacts/{contact['id']}"
    assert (await client.get(path)).data == contact

    dup = await client.post("/contacts", json={"email": "ANN@dest.test"})
    assert assert_error(dup, 409, "CONFLICT")["details"][0]["field"] == "email"

    changed = (await client.patch(path, json={"last_name": "Lee", "tags": ["customer"]})).data
    assert changed["last_name"] == "Lee" and changed["first_name"] == "Ann"
    assert changed["tags"] == ["customer"] and changed["custom_fields"] == {
        "plan": "pro",
        "seats": 5,
    }
    assert_error(await client.patch(path, json={"email": "bad"}), 422, "VALIDATION_ERROR")
    assert_error(await client.patch(path, json={"tags": None}), 422, "VALIDATION_ERROR")
    await client.post("/contacts", json={"email": "bob@dest.test"})
    clash = await client.patch(path, json={"email": "bob@dest.test"})
    assert_error(clash, 409, "CONFLICT")

    assert (await client.delete(path)).data == {"id": contact["id"], "deleted": True}
    assert_error(await client.get(path), 404, "NOT_FOUND")
    assert_error(await client.delete(path), 404, "NOT_FOUND")
    assert_error(await client.patch(path, json={"company": "x"}), 404, "NOT_FOUND")


async def test_list_by_tag_with_cursor(client: Client) -> None:
    for i in range(7):
        tags = ["even"] if i % 2 == 0 else ["odd"]
        await client.post("/contacts", json={"email": f"c{i}@dest.test", "tags": tags})
    seen: list[str] = []
    cursor = None
    while True:
        params = {"tag": "even", "limit": "2"}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/contacts", params=params)).data
        seen += [c["email"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == ["c6@dest.test", "c4@dest.test", "c2@dest.test", "c0@dest.test"]
    everyone = (await client.get("/contacts", params={"limit": "100"})).data
    assert len(everyone["items"]) == 7
    bad = await client.get("/contacts", params={"tag": "has space"})
    assert_error(bad, 422, "VALIDATION_ERROR")


async def test_suppressions(client: Client, pool: asyncpg.Pool, tenant_id: int) -> None:
    added = await client.post("/suppressions", json={"email": "Gone@Dest.test", "reason": "asked"})
    assert added.status == 201 and added.data["email"] == "gone@dest.test"
    again = await client.post("/suppressions", json={"email": "gone@dest.test", "reason": "other"})
    assert again.status == 200 and again.data["reason"] == "asked"
    assert (
        await pool.fetchval("SELECT count(*) FROM suppressions WHERE tenant_id = $1", tenant_id)
        == 1
    )
    for i in range(3):
        await client.post("/suppressions", json={"email": f"s{i}@dest.test"})
    first = (await client.get("/suppressions", params={"limit": "2"})).data
    rest = (await client.get("/suppressions", params={"cursor": first["next_cursor"]})).data
    emails = [s["email"] for s in first["items"] + rest["items"]]
    assert emails == sorted(emails) and len(emails) == 4
    assert (await client.delete("/suppressions/GONE@dest.test")).status == 200
    assert_error(await client.delete("/suppressions/gone@dest.test"), 404, "NOT_FOUND")
    assert_error(await client.post("/suppressions", json={"email": "x"}), 422, "VALIDATION_ERROR")
