"""Shop and CRM connectors as the platforms call them: signed with each one's own scheme,
mapped to contacts with the documentation's fields, replays refused, forgeries changing
nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest

from api.server import ApiServer
from tests.helpers import Client, assert_error

SHOPIFY_SECRET = "shpss_0123456789abcdef0123456789abcdef"
HUBSPOT_SECRET = "9d4f3e1a-hubspot-client-secret"
SALESFORCE_TOKEN = "sf-shared-secret-5f2b9c"

# Shopify's customers/create sample, as its admin sends it.
CUSTOMER = {
    "id": 706405506930370084,
    "email": "bob@biller.test",
    "created_at": "2026-01-15T09:30:00-05:00",
    "first_name": "Bob",
    "last_name": "Biller",
    "orders_count": 3,
    "state": "disabled",
    "total_spent": "199.65",
    "verified_email": True,
    "tags": "",
    "currency": "USD",
    "default_address": {"company": "Biller Inc", "country": "Canada", "default": True},
}


@pytest.fixture
async def shop(client: Client) -> Client:
    """A test-mode account with a default sender and the welcome template."""
    sender = await client.request("PUT", "/settings/sender", {"from": "shop@acme.test"})
    assert sender.status == 200, sender.body
    made = await client.post(
        "/templates",
        json={
            "id": "welcome_template",
            "name": "Welcome",
            "subject": "Welcome {{first_name}}!",
            "html": "<p>Welcome {{first_name}}! {{orders_count}} orders, ${{total_spent}}</p>",
        },
    )
    assert made.status == 201, made.body
    return client


async def connect(client: Client, platform: str, secret: str, **extra: Any) -> dict[str, Any]:
    reply = await client.post("/connectors", json={"platform": platform, "secret": secret, **extra})
    assert reply.status == 201, reply.body
    assert "secret" not in reply.data
    return dict(reply.data)


async def post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, data=body, headers=headers) as r:
        text = await r.text()
        try:
            return r.status, orjson.loads(text)
        except orjson.JSONDecodeError:
            return r.status, text


def shopify_headers(body: bytes, webhook_id: str, secret: str = SHOPIFY_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "customers/create",
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Shop-Domain": "acme-shop.myshopify.com",
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-API-Version": "2025-01",
    }


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    return (
        await pool.fetchval("SELECT count(*) FROM contacts"),
        await pool.fetchval("SELECT count(*) FROM messages"),
        await pool.fetchval("SELECT count(*) FROM connector_deliveries"),
    )


async def test_shopify_customer_created_gets_the_documented_fields_and_the_welcome(
    shop: Client, api: ApiServer, http: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    connector = await connect(shop, "shopify", SHOPIFY_SECRET, template_id="welcome_template")
    url = api.url + connector["webhook_path"]
    body = orjson.dumps(CUSTOMER)

    # Tampered: the signature of another body. Nothing changes.
    forged = body.replace(b"199.65", b"999999.00")
    status, answer = await post(http, url, forged, shopify_headers(body, "wh-1"))
    assert status == 401 and answer["error"]["code"] == "UNAUTHORIZED"
    status, _ = await post(http, url, body, shopify_headers(body, "wh-1", secret="other-secret"))
    assert status == 401
    no_signature = {k: v for k, v in shopify_headers(body, "wh-1").items() if "Hmac" not in k}
    assert (await post(http, url, body, no_signature))[0] == 401
    assert await counts(pool) == (0, 0, 0)

    status, answer = await post(http, url, body, shopify_headers(body, "wh-1"))
    assert status == 200, answer
    assert answer["data"] == {"received": True, "created": 1, "updated": 0, "duplicate": False}
    [contact] = (await shop.get("/contacts")).data["items"]
    assert contact["email"] == "bob@biller.test"
    assert contact["first_name"] == "Bob" and contact["last_name"] == "Biller"
    assert contact["company"] == "Biller Inc"
    assert contact["custom_fields"] == {
        "shopify_customer_id": "706405506930370084",
        "total_spent": "199.65",
        "orders_count": 3,
    }
    assert contact["tags"] == ["shopify_customer", "new_customer"]
    welcome = await pool.fetchrow(
        "SELECT subject, recipient, sandbox, personalization FROM messages"
    )
    assert welcome["subject"] == "Welcome {{first_name}}!"  # rendered at sending, with:
    assert welcome["personalization"]["first_name"] == "Bob"
    assert welcome["personalization"]["orders_count"] == 3
    assert welcome["recipient"] == "bob@biller.test"
    assert welcome["sandbox"] is True  # a test-mode connector: the capture sink

    # Shopify retrying the same delivery: acknowledged, nothing done twice.
    status, answer = await post(http, url, body, shopify_headers(body, "wh-1"))
    assert status == 200 and answer["data"]["duplicate"] is True
    assert await counts(pool) == (1, 1, 1)

    # Another delivery for the same customer updates it and sends nothing more.
    changed = orjson.dumps({**CUSTOMER, "orders_count": 4, "total_spent": "250.00"})
    headers = shopify_headers(changed, "wh-2") | {"X-Shopify-Topic": "customers/update"}
    status, answer = await post(http, url, changed, headers)
    assert status == 200 and answer["data"]["updated"] == 1
    [contact] = (await shop.get("/contacts")).data["items"]
    assert contact["custom_fields"]["orders_count"] == 4
    assert await pool.fetchval("SELECT count(*) FROM messages") == 1

    # The secret is sealed at rest; a deleted connector's URL is gone.
    sealed = await pool.fetchval("SELECT secret_sealed FROM connectors")
    assert SHOPIFY_SECRET.encode() not in bytes(sealed)
    assert (await shop.delete(f"/connectors/{connector['id']}")).status == 200
    assert (await post(http, url, body, shopify_headers(body, "wh-3")))[0] == 404


async def test_hubspot_signature_v3(
    shop: Client, api: ApiServer, http: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    sequence = {
        "name": "crm_nurture",
        "from": {"email": "sales@acme.test"},
        "steps": [{"subject": "Hello", "content": {"text": "Hi"}}],
    }
    assert (await shop.post("/sequences", json=sequence)).status == 201
    connector = await connect(shop, "hubspot", HUBSPOT_SECRET, sequence="crm_nurture")
    url = api.url + connector["webhook_path"]
    body = orjson.dumps(
        [
            {
                "id": "51",
                "properties": {
                    "email": "cy@corp.test",
                    "firstname": "Cy",
                    "lastname": "Corp",
                    "company": "Corp",
                    "lifecyclestage": "customer",
                },
            },
            {"eventId": 1, "subscriptionType": "contact.deletion", "objectId": 52},
        ]
    )

    def signed(stamp: int, payload: bytes = body) -> dict[str, str]:
        source = b"POST" + url.encode() + payload + str(stamp).encode()
        digest = hmac.new(HUBSPOT_SECRET.encode(), source, hashlib.sha256).digest()
        return {
            "Content-Type": "application/json",
            "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
            "X-HubSpot-Request-Timestamp": str(stamp),
        }

    now = int(time.time() * 1000)
    stale = now - 6 * 60 * 1000
    assert (await post(http, url, body, signed(stale)))[0] == 401  # older than five minutes
    assert (await post(http, url, body + b" ", signed(now)))[0] == 401  # not what was signed
    assert await counts(pool) == (0, 0, 0)

    status, answer = await post(http, url, body, signed(now))
    assert status == 200 and answer["data"]["created"] == 1, answer
    [contact] = (await shop.get("/contacts")).data["items"]
    assert contact["custom_fields"] == {"hubspot_contact_id": "51", "lifecycle_stage": "customer"}
    assert contact["tags"] == ["hubspot_sync", "crm_integration"]
    # Enrolled in the connector's sequence: its first step is queued.
    assert await pool.fetchval("SELECT count(*) FROM sequence_enrollments") == 1
    # The same request again (a replay within the five minutes) is refused as a duplicate.
    status, answer = await post(http, url, body, signed(now))
    assert status == 200 and answer["data"]["duplicate"] is True
    assert await pool.fetchval("SELECT count(*) FROM sequence_enrollments") == 1


def outbound_message(note_id: str, email: str = "dee@lead.test") -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"
 xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D5g000004ABCDEA2</OrganizationId>
   <ActionId>04k5g000000XYZAAA4</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/60.0/00D5g000004ABCD</EnterpriseUrl>
   <PartnerUrl>https://acme.my.salesforce.com/services/Soap/u/60.0/00D5g000004ABCD</PartnerUrl>
   <Notification>
    <Id>{note_id}</Id>
    <sObject xsi:type="sf:Lead" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>00Q5g00000ABCDEFGH</sf:Id>
     <sf:Company>Lead Co</sf:Company>
     <sf:Email>{email}</sf:Email>
     <sf:FirstName>Dee</sf:FirstName>
     <sf:Industry>Retail</sf:Industry>
     <sf:LastName>Lead</sf:LastName>
     <sf:LeadSource>Web</sf:LeadSource>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


async def test_salesforce_outbound_message(
    shop: Client, api: ApiServer, http: aiohttp.ClientSession, pool: asyncpg.Pool
) -> None:
    connector = await connect(shop, "salesforce", SALESFORCE_TOKEN)
    url = api.url + connector["webhook_path"]
    soap = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
    body = outbound_message("04l5g000001AbCdAAK")
    assert (await post(http, url + "?token=wrong-token", body, soap))[0] == 401
    assert (await post(http, url, body, soap))[0] == 401
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><lolz>&lol2;</lolz>'
    )
    assert (await post(http, url + f"?token={SALESFORCE_TOKEN}", bomb, soap))[0] == 422
    assert await counts(pool) == (0, 0, 0)

    status, answer = await post(http, url + f"?token={SALESFORCE_TOKEN}", body, soap)
    assert status == 200 and "<Ack>true</Ack>" in answer
    [contact] = (await shop.get("/contacts")).data["items"]
    assert contact["first_name"] == "Dee" and contact["company"] == "Lead Co"
    assert contact["custom_fields"] == {
        "salesforce_lead_id": "00Q5g00000ABCDEFGH",
        "lead_source": "Web",
        "industry": "Retail",
    }
    assert contact["tags"] == ["salesforce_lead", "web"]
    # Salesforce resends a notification it saw no Ack for: once only.
    again = outbound_message("04l5g000001AbCdAAK", email="other@lead.test")
    status, answer = await post(http, url + f"?token={SALESFORCE_TOKEN}", again, soap)
    assert status == 200 and "<Ack>true</Ack>" in answer
    assert await pool.fetchval("SELECT count(*) FROM contacts") == 1


async def test_connectors_are_per_tenant(shop: Client, make_key: Any) -> None:
    connector = await connect(shop, "shopify", SHOPIFY_SECRET)
    listed = (await shop.get("/connectors")).data["items"]
    assert [c["id"] for c in listed] == [connector["id"]]
    other = shop.with_key(await make_key("globex", tier="enterprise", test=True))
    assert (await other.get("/connectors")).data["items"] == []
    assert_error(await other.delete(f"/connectors/{connector['id']}"), 404, "NOT_FOUND")
    free = shop.with_key(await make_key("initech", tier="free", test=True))
    reply = await free.post("/connectors", json={"platform": "shopify", "secret": SHOPIFY_SECRET})
    assert_error(reply, 403, "TIER_REQUIRED")
