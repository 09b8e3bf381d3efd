"""The OpenAPI 3.1 document, generated from the registered operations and their models.

Nothing here is written by hand about a route: paths, parameters, request bodies and
responses all come from the `API.route(...)` declarations and the pydantic models that also
validate requests and build responses, so the document describes what the server does.
pydantic emits JSON Schema 2020-12, which is OpenAPI 3.1's schema dialect.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from api.models import ErrorEnvelope, Meta
from api.routing import Operation, Registry

REF = "#/components/schemas/{model}"
_PATH_PARAM = re.compile(r"{(\w+)}")

_ERROR_TEXT = {
    400: "Malformed JSON or a body that is not an object",
    401: "Missing, malformed, revoked or expired credentials",
    403: "The caller may not do this: publishable keys only read campaigns and analytics, "
    "and a call outside the account's plan tier is TIER_REQUIRED (see x-tier)",
    404: "No such resource (or it belongs to another account)",
    409: "Conflicts with the resource's state",
    413: "Request body too large",
    415: "Content-Type is not application/json",
    422: "Validation failed; details name each field",
    429: "Rate limit exceeded; see Retry-After",
    500: "Internal error; quote the request id",
    503: "The database is unavailable",
}

_RATE_HEADERS = {
    "X-RateLimit-Limit": {"$ref": "#/components/headers/X-RateLimit-Limit"},
    "X-RateLimit-Remaining": {"$ref": "#/components/headers/X-RateLimit-Remaining"},
    "X-RateLimit-Reset": {"$ref": "#/components/headers/X-RateLimit-Reset"},
}


# Path parameters by name: an id is a public id; a domain a host name (a fuzzer that fills it
# with arbitrary text only ever gets 404s, and most of what it makes cannot be a URL segment).
PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "id": {"type": "string", "minLength": 1, "maxLength": 100},
    "domain": {
        "type": "string",
        "minLength": 1,
        "maxLength": 253,
        "pattern": "^[A-Za-z0-9][A-Za-z0-9.-]*$",
    },
}


def _error_codes(op: Operation) -> list[int]:
    codes = set(op.errors) | {500}
    if op.auth:
        codes |= {401, 429}
        if not op.publishable or op.tier != "free":  # publishable keys, lower tiers
            codes.add(403)
    if op.body is not None:
        codes |= {400, 413, 415, 422}
    if op.query is not None or op.headers:
        codes.add(422)
    if op.path.endswith("/health"):
        codes.add(503)
    return sorted(codes)


def _parameters(op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in _PATH_PARAM.findall(op.path):
        # Ids are the public ids the API gave out (`campaign_…`); a template's may be chosen.
        schema: dict[str, Any] = PATH_SCHEMAS.get(name, {"type": "string", "maxLength": 254})
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    if op.query is not None:
        schema = op.query.model_json_schema(mode="validation")
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
            }
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    for header in op.headers:
        params.append(
            {
                "name": header,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "Same key and same body: the first response again, nothing "
                "queued twice. Same key, other body: 409.",
            }
        )
    return params


def build(registry: Registry, prefix: str = "/api/v1") -> dict[str, Any]:
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (ErrorEnvelope, "serialization"),
        (Meta, "serialization"),
    ]
    for op in registry.operations:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.response is not None:
            wanted.append((op.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, top = models_json_schema(unique, ref_template=REF)
    schemas = top.get("$defs", {})
    meta_ref = refs[(Meta, "serialization")]

    paths: dict[str, dict[str, Any]] = {}
    for op in registry.operations:
        data = refs[(op.response, "serialization")] if op.response else {"type": "null"}
        success: dict[str, Any] = {
            "description": "Success",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["success", "data", "meta"],
                        "properties": {"success": {"const": True}, "data": data, "meta": meta_ref},
                    }
                }
            },
        }
        if op.auth:
            success["headers"] = dict(_RATE_HEADERS)
        responses: dict[str, Any] = {str(op.status): success}
        if op.path == "/emails/send" or op.path == "/emails/send-bulk":
            responses["200"] = {**success, "description": "Replayed for an Idempotency-Key"}
        if op.path == "/suppressions" and op.method == "POST":
            responses["200"] = {**success, "description": "Already suppressed (first reason kept)"}
        for code in _error_codes(op):
            error: dict[str, Any] = {
                "description": _ERROR_TEXT.get(code, "Error"),
                "content": {"application/json": {"schema": refs[(ErrorEnvelope, "serialization")]}},
            }
            if op.auth and code not in (401, 403):  # refused before it is counted
                error["headers"] = dict(_RATE_HEADERS)
            if code == 429:
                error["headers"] = {
                    **_RATE_HEADERS,
                    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds"},
                }
            responses[str(code)] = error
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": _parameters(op),
            "responses": responses,
            # An empty requirement is OpenAPI's "or no credentials at all".
            "security": ([{"bearerAuth": []}] if op.auth else []) + ([{}] if op.anonymous else []),
            # Whether a publishable (pk_) key, the kind meant for browsers, may call it.
            "x-publishable": op.publishable,
            # The lowest plan tier that includes it; below it the answer is 403 TIER_REQUIRED.
            "x-tier": op.tier,
        }
        if op.body is not None:
            operation["requestBody"] = {
                "required": not op.body_optional,
                "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
            }
        paths.setdefault(prefix + op.path, {})[op.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "PenguinMails API",
            "version": "1.0.0",
            "description": "Campaigns, sends, contacts, analytics and webhooks. Every response "
            "is an envelope: {success, data, meta} or {success: false, error}.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (sk_live_..., pk_test_...) or a login token. "
                    "A key or token acts in one mode: test (sk_test_, pk_test_, or a token of a "
                    "user created in test mode) sees and changes only test objects, and its "
                    "mail only reaches the sandbox; live sees only live objects. Publishable "
                    "(pk_) keys may only call the operations marked x-publishable: true.",
                }
            },
            "headers": {
                "X-RateLimit-Limit": {
                    "schema": {"type": "integer"},
                    "description": "Requests allowed in the current window",
                },
                "X-RateLimit-Remaining": {
                    "schema": {"type": "integer"},
                    "description": "Requests left in the current window",
                },
                "X-RateLimit-Reset": {
                    "schema": {"type": "integer"},
                    "description": "Epoch seconds when the window ends",
                },
            },
        },
    }
