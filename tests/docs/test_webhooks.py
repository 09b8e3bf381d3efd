"""docs/webhooks.md: every event type we send is described with a sample body that is exactly
what the dispatcher's payload() makes of such an event; the receiver examples verify real
signatures and reject bad ones."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from penguinmails.webhooks.endpoints import EVENT_TYPES
from penguinmails.webhooks.signing import generate_secret, signature_headers
from tests.helpers import debian_tool
from tracker.dispatcher import payload

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
BODY = b'{"id":"evt_1","type":"email.opened","created":"2026-01-01T00:00:00.000Z","data":{}}'


def block(language: str) -> str:
    [code] = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    return code


def documented() -> dict[str, tuple[str, dict[str, Any]]]:
    """Each event type's section: its heading, what it means, then its sample body."""
    sections = re.findall(
        r"^### `([a-z_]+\.[a-z_]+)`\n\n(.+?)\n\n```json\n(.*?)```", DOC.read_text(), re.S | re.M
    )
    found = {kind: (meaning, json.loads(sample)) for kind, meaning, sample in sections}
    assert len(found) == len(sections), "a type documented twice"
    return found


def claim_row(sample: dict[str, Any]) -> dict[str, Any]:
    """The claimed delivery row (tracker/queries.sql claim_deliveries) an event like the
    sample would be: its message's and campaign's fields, and the event data as stored."""
    data = dict(sample["data"])
    row: dict[str, Any] = {
        "event_public_id": sample["id"],
        "event_type": sample["type"],
        "event_created_at": datetime.fromisoformat(sample["created"].replace("Z", "+00:00")),
        "has_message": False,
        "has_campaign": False,
        "message_public_id": None,
        "rfc_message_id": None,
        "recipient": None,
        "message_tags": None,
        "message_metadata": None,
        "campaign_public_id": None,
        "campaign_name": None,
    }
    stored: dict[str, Any] = {}
    if "email" in data:
        email = data.pop("email")
        row.update(
            has_message=True,
            message_public_id=email["id"],
            rfc_message_id=email["message_id"],
            recipient=email["to"],
            message_tags=email["tags"],
            message_metadata=email["metadata"],
            has_campaign=email["campaign_id"] is not None,
            campaign_public_id=email["campaign_id"],
        )
        analytics = data.pop("analytics", None)
        if analytics is not None:  # stored under the keys the API's breakdowns group by
            stored.update(
                open_count=analytics["open_count"],
                click_count=analytics["click_count"],
                device_type=analytics["device_type"],
                country=analytics["location"],
                country_code=analytics["country_code"],
            )
    elif "campaign" in data:
        campaign = dict(data.pop("campaign"))
        row.update(has_campaign=True, campaign_public_id=campaign.pop("id"))
        row["campaign_name"] = campaign.pop("name", None)
        stored.update(campaign)
    stored.update(data)
    row["event_data"] = stored
    return row


def test_every_event_type_is_documented():
    docs = documented()
    assert sorted(docs) == sorted(EVENT_TYPES)
    for kind, (meaning, sample) in docs.items():
        assert sample["type"] == kind
        assert len(meaning) > 20, kind


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_each_sample_is_what_the_dispatcher_sends(kind):
    _, sample = documented()[kind]
    assert orjson.loads(payload(claim_row(sample))) == sample
    assert re.fullmatch(r"evt_[0-9a-f]{32}", sample["id"])
    subject = sample["data"].get("email") or sample["data"].get("campaign")
    if kind.startswith("email."):
        assert sample["data"]["email"][kind.removeprefix("email.") + "_at"] == sample["created"]
    if subject is not None:  # public ids, never a row's integer key
        assert re.fullmatch(r"(msg|campaign)_[0-9a-f]{32}", subject["id"])


def cases() -> list[tuple[str, str, dict[str, str], bytes, bool]]:
    """(name, secret, headers, body, valid)."""
    now = int(time.time())
    whsec, plain, other = generate_secret(), "a-plain-shared-secret-string", generate_secret()
    good = signature_headers("msg_1", now, BODY, [whsec])
    rotated = signature_headers("msg_1", now, BODY, [other, whsec])
    return [
        ("whsec", whsec, good, BODY, True),
        ("plain secret", plain, signature_headers("msg_1", now, BODY, [plain]), BODY, True),
        ("tampered body", whsec, good, BODY.replace(b"opened", b"clicked"), False),
        ("wrong secret", other, good, BODY, False),
        ("stale", whsec, signature_headers("msg_1", now - 400, BODY, [whsec]), BODY, False),
        ("future", whsec, signature_headers("msg_1", now + 400, BODY, [whsec]), BODY, False),
        ("rotation, new secret", other, rotated, BODY, True),
        # Mid-rotation the simple header follows the new secret only.
        ("rotation, old secret", whsec, rotated, BODY, False),
    ]


def test_python_example():
    namespace: dict[str, Any] = {}
    exec(block("python"), namespace)
    verify = namespace["verify_penguinmails"]
    for name, secret, headers, body, valid in cases():
        if valid:
            assert verify(secret, headers, body)["id"] == "evt_1", name
        else:
            with pytest.raises(ValueError):
                verify(secret, headers, body)


def test_reference_library_example():
    from standardwebhooks.webhooks import WebhookVerificationError

    namespace: dict[str, Any] = {}
    exec(block("python-library"), namespace)
    for name, secret, headers, body, valid in cases():
        if name == "rotation, old secret":
            valid = True  # the library checks webhook-signature only, which still has it
        if valid:
            assert namespace["handle"](secret, headers, body)["id"] == "evt_1", name
        else:
            with pytest.raises(WebhookVerificationError):
                namespace["handle"](secret, headers, body)


def test_javascript_example(tmp_path):
    node = debian_tool("node", "nodejs")
    module = tmp_path / "verify.js"
    module.write_text(block("javascript"))
    runner = tmp_path / "run.js"
    runner.write_text(
        "const { verifyPenguinMails } = require('./verify.js');\n"
        "const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "console.log(JSON.stringify(cases.map(([secret, headers, body]) => {\n"
        "  try { verifyPenguinMails(secret, headers, Buffer.from(body, 'base64')); return true; }\n"
        "  catch (e) { return false; }\n"
        "})));\n"
    )
    import base64

    all_cases = cases()
    payload = json.dumps(
        [
            [secret, {k.lower(): v for k, v in headers.items()}, base64.b64encode(body).decode()]
            for _, secret, headers, body, _ in all_cases
        ]
    )
    out = subprocess.run(
        [node, str(runner)],
        input=payload,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        cwd=tmp_path,
    ).stdout
    assert json.loads(out) == [valid for *_, valid in all_cases]
