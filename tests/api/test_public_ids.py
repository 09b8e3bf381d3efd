"""Ids the API gives out: prefixed, sortable by creation, unguessable, never integer keys."""

from __future__ import annotations

import itertools
import re

from tests.helpers import Client, assert_error, create_campaign

SHAPE = r"{}_[0-9a-f]{{32}}"


async def test_every_object_has_a_prefixed_opaque_id(client: Client) -> None:
    campaigns = [await create_campaign(client) for _ in range(3)]
    contact = (await client.post("/contacts", json={"email": "c@dest.test"})).data
    message = (
        await client.post(
            "/emails/send", json={"to": "m@dest.test", "subject": "Hi", "content": "<p>Hi</p>"}
        )
    ).data
    hook = (await client.post("/webhooks", json={"url": "https://hooks.example.com/x"})).data
    key = (await client.post("/api-keys", json={"name": "ci"})).data
    user = (
        await client.post("/users", json={"email": "u@dest.test", "password": "a long password"})
    ).data
    for prefix, value in [
        *(("campaign", c["id"]) for c in campaigns),
        ("contact", contact["id"]),
        ("msg", message["message_id"]),
        ("wh", hook["id"]),
        ("key", key["id"]),
        ("user", user["id"]),
    ]:
        assert re.fullmatch(SHAPE.format(prefix), value), value

    # Sortable by creation: the time comes first. Unguessable: 80 random bits follow, so
    # one id says nothing about the next.
    ids = [c["id"] for c in campaigns]
    assert ids == sorted(ids)
    assert len({i[-20:] for i in ids}) == 3
    assert all(int(a[-20:], 16) + 1 != int(b[-20:], 16) for a, b in itertools.pairwise(ids))

    # The message's own view names its campaign by public id too, and its events have ids.
    status = (await client.get(f"/messages/{message['message_id']}")).data
    assert status["id"] == message["message_id"] and status["campaign_id"] is None
    assert all(re.fullmatch(SHAPE.format("evt"), e["id"]) for e in status["events"])


async def test_integer_keys_and_other_kinds_ids_are_not_found(client: Client) -> None:
    made = await create_campaign(client)
    contact = (await client.post("/contacts", json={"email": "c@dest.test"})).data
    for path in (
        "/campaigns/1",
        f"/campaigns/{contact['id']}",  # a real id, of another kind
        f"/contacts/{made['id']}",
        "/messages/1",
        f"/campaigns/{made['id'].upper()}",
    ):
        assert_error(await client.get(path), 404, "NOT_FOUND")


async def test_lists_page_by_id_newest_first(client: Client) -> None:
    made = [await create_campaign(client) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/campaigns", params=params)).data
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    assert seen == sorted((c["id"] for c in made), reverse=True)
