"""A/B variants of a campaign's content: resolved and checked when the campaign is written,
and given out by weight when its messages are queued (campaign send and send-bulk).

`variants: [{"name": "A", "weight": 80, "subject": ..., "html": ..., "text": ...,
"template_id": ...}]`: each part a variant leaves out is the base content's. Each recipient
gets one variant, drawn by weight, recorded on its message (messages.variant). With an
`ab_test`, a campaign's recipients are split: `test_fraction` of them (drawn at random) get
the variants; the others are queued as 'held' messages, committed with the rest but never
claimed by the MTA, until penguinmails.ab.decide releases them with the winner's content.
Once a winner is decided, later sends (send-bulk) get the winner.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from api.errors import ApiError, validation_error
from api.models import ABTest, Recipient, VariantIn, VariantOut
from api.senders import check_draft
from api.templates import check_content, resolve_content
from penguinmails.messages import Draft, Queued, enqueue_draft
from penguinmails.queries import load

SQL = load("api", "variants.sql")


async def resolve_variants(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant_id: int,
    variants: Sequence[VariantIn],
    base: Mapping[str, str | None],
    field: str = "variants",
) -> list[dict[str, Any]]:
    """Each variant with its template filled in, checked as its messages would be (the
    parts it leaves out are `base`'s subject, html, text); a 422 names it (`variants[1].html`)."""
    resolved = []
    for i, variant in enumerate(variants):
        try:
            content = await resolve_content(
                conn,
                tenant_id,
                template_id=variant.template_id,
                subject=variant.subject,
                html=variant.html,
                text=variant.text,
            )
            check_content(
                content.subject or base["subject"],
                content.html if content.html is not None else base["html"],
                content.text if content.text is not None else base["text"],
            )
        except ApiError as exc:
            if exc.status != 422:
                raise
            raise validation_error(
                [{**d, "field": f"{field}[{i}].{d['field']}"} for d in exc.details]
            ) from None
        resolved.append(
            {
                "name": variant.name,
                "weight": variant.weight,
                "subject": content.subject,
                "html": content.html,
                "text": content.text,
                "template_id": content.template_id,
                "template_version": content.template_version,
            }
        )
    return resolved


def ab_test_dict(test: ABTest | None, variants: Sequence[Any]) -> dict[str, Any] | None:
    """What the row holds; a test needs two variants to choose between."""
    return needs_variants(None if test is None else test.model_dump(), variants)


def needs_variants(test: dict[str, Any] | None, variants: Sequence[Any]) -> dict[str, Any] | None:
    if test is not None and len(variants) < 2:
        raise validation_error(
            [{"field": "ab_test", "message": "an A/B test needs at least two variants"}]
        )
    return test


def variant_models(variants: Sequence[Mapping[str, Any]]) -> list[VariantOut]:
    return [VariantOut(**v) for v in variants]


def _variant_draft(draft: Draft, variant: Mapping[str, Any]) -> Draft:
    return dataclasses.replace(
        draft,
        subject=variant["subject"] if variant["subject"] is not None else draft.subject,
        html=variant["html"] if variant["html"] is not None else draft.html,
        text=variant["text"] if variant["text"] is not None else draft.text,
    )


def check_variants(
    draft: Draft, variants: Sequence[Mapping[str, Any]], recipients: Sequence[Recipient]
) -> None:
    """Every variant can be filled for every recipient (a variable a variant adds)."""
    for i, variant in enumerate(variants):
        try:
            check_draft(_variant_draft(draft, variant), recipients)
        except ApiError as exc:
            exc.details = [
                {**d, "message": f"variants[{i}] ({variant['name']}): {d['message']}"}
                for d in exc.details
            ]
            raise


def assign(
    variants: Sequence[Mapping[str, Any]],
    count: int,
    ab_test: Mapping[str, Any] | None,
    winner: str | None,
    rng: random.Random | None = None,
) -> list[str | None]:
    """Each recipient's variant: the winner once there is one; else by weight, and with an
    A/B test only for a random `test_fraction` of them (None: held for the winner)."""
    draw = rng or random.Random()
    if winner is not None:
        return [winner] * count
    names = draw.choices(
        [v["name"] for v in variants], weights=[v["weight"] for v in variants], k=count
    )
    chosen: list[str | None] = list(names)
    if ab_test is not None:
        tested = math.ceil(count * ab_test["test_fraction"])
        for i in draw.sample(range(count), count - tested):
            chosen[i] = None
    return chosen


async def enqueue_variants(
    conn: asyncpg.Connection,
    tenant_id: int,
    draft: Draft,
    variants: Sequence[Mapping[str, Any]],
    ab_test: Mapping[str, Any] | None,
    winner: str | None,
) -> list[Queued]:
    """enqueue_draft, each recipient with its variant's content (held ones with the base
    content, in the 'held' status), in the recipients' order. In the caller's transaction:
    the MTA sees the rows only once their variant and status are written."""
    if not variants:
        return await enqueue_draft(conn, tenant_id, draft)
    chosen = assign(variants, len(draft.recipients), ab_test, winner)
    by_name = {v["name"]: v for v in variants}
    personalization = list(draft.personalization or [{} for _ in draft.recipients])
    groups: dict[str | None, list[int]] = {}
    for i, name in enumerate(chosen):
        groups.setdefault(name, []).append(i)
    placed: dict[int, Queued] = {}
    for name, indexes in groups.items():
        part = _variant_draft(draft, by_name[name]) if name is not None else draft
        part = dataclasses.replace(
            part,
            recipients=[draft.recipients[i] for i in indexes],
            personalization=[personalization[i] for i in indexes],
        )
        queued = await enqueue_draft(conn, tenant_id, part)
        await conn.execute(SQL["mark_variant"], [q.id for q in queued], name, name is None)
        placed.update(zip(indexes, queued, strict=True))
    return [placed[i] for i in range(len(chosen))]
