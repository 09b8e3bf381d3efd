"""The receiver examples in docs/webhooks.md verify real signatures and reject bad ones."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from penguinmails.webhooks.signing import generate_secret, signature_headers
from tests.helpers import debian_tool

DOC = Path(__file__).resolve().parents[2] / "docs" / "webhooks.md"
BODY = b'{"id":"evt_1","type":"email.opened","created":"2026-01-01T00:00:00.000Z","data":{}}'


def block(language: str) -> str:
    [code] = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)
    return code


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
