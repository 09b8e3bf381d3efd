"""Content intelligence, local and explainable: the product documentation's AI endpoints.

`POST /ai/optimize-content` answers the documented shape (`original`, `optimized`,
`improvements`) and says how each part was obtained:
- checks and fixes are api.content_checks' rules, each change naming its rule and why;
- sentiment is VADER's (vaderSentiment, a lexicon model shipped in the package);
- the expected changes in open and click rate come from this account's own delivered
  messages once it has `[ai] min_history` of them (subjects with a feature against those
  without, for each feature the changes removed), else from the documented prior: no
  change (0.0). `improvements.estimate` says which, on how many messages;
- the SpamAssassin score is the local `spamassassin -L` (no network tests) over a message
  built as the composer would build it, when the program is installed; the answer says so
  when it is not;
- a subject rewritten by a language model only when the operator configured an
  OpenAI-compatible endpoint ([ai] rewrite_url) and the request asks (`rewrite: true`); its
  answer is kept only if it passes the subject checks.

`POST /ai/analyze-contact` (the SDK's analyzeContact) derives only what is local: role or
person, free mail or company, the MX through a resolver configured as the MTA's, past
engagement with this account. Campaign analytics' `ai_insights` is `campaign_insights`.

Every route is the professional tier's (the documentation's table: AI optimisation).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import shutil
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import aiohttp
import asyncpg
import dkim
import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from api.content_checks import Analysis, Content, analyse, subject_features, subject_problems
from api.content_checks import Change as RuleChange
from api.models import (
    AiInsight,
    AiInsights,
    CampaignAiOptimization,
    ContactAnalysis,
    ContactAnalysisRequest,
    ContactEngagement,
    ContentChange,
    ContentFinding,
    Estimate,
    FeatureEvidence,
    Improvements,
    OptimizedContent,
    OptimizeRequest,
    OptimizeResult,
    Rewriting,
    Sentiment,
    SpamAssassinResult,
    SpamRule,
    SpamScore,
)
from api.routing import API, Call
from api.tiers import at_least
from penguinmails import template
from penguinmails.config import AiSettings, MtaSettings, split_hostport
from penguinmails.html_text import pixel_left_out
from penguinmails.messages import InvalidMessage, address_domain
from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("api", "ai.sql")

VADER_MODEL = "vaderSentiment 3.3 (VADER lexicon)"
# The last this-many delivered messages of an account are what its model is fitted on.
HISTORY_LIMIT = 20_000
# Each side of a feature comparison (with it, without it) needs this many messages to count.
MIN_GROUP = 30
_REPORT_LINE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z0-9_]+)\s+(.*)$")
_STATUS_SCORE = re.compile(r"score=(-?\d+(?:\.\d+)?)")


@functools.cache
def _vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()  # reads its lexicon file once


def sentiment(content: Content) -> Sentiment:
    from penguinmails.html_text import html_to_text

    body = content.text or (html_to_text(content.html) if content.html else "")
    scores = _vader().polarity_scores(f"{content.subject}\n{body}")
    return Sentiment(
        compound=round(scores["compound"], 4),
        positive=round(scores["pos"], 4),
        neutral=round(scores["neu"], 4),
        negative=round(scores["neg"], 4),
        model=VADER_MODEL,
    )


# -- the estimate ----------------------------------------------------------------------------


async def estimate(
    pool: asyncpg.Pool | asyncpg.Connection,
    tenant_id: int,
    analysis: Analysis,
    settings: AiSettings,
) -> tuple[float, float, Estimate]:
    """(open rate change, click rate change, how they were obtained)."""
    rows = await pool.fetch(SQL["subject_history"], tenant_id, HISTORY_LIMIT)
    delivered = sum(r["delivered"] for r in rows)
    if delivered < settings.min_history:
        return (
            0.0,
            0.0,
            Estimate(
                method="prior",
                sample_size=delivered,
                basis=f"this account has {delivered} delivered messages, fewer than the "
                f"{settings.min_history} its own model needs; the documented prior is no "
                "change, so none is claimed",
            ),
        )
    groups: dict[str, dict[bool, list[int]]] = {}
    for row in rows:
        for name, present in subject_features(row["subject"]).items():
            counts = groups.setdefault(name, {True: [0, 0, 0], False: [0, 0, 0]})[present]
            counts[0] += row["delivered"]
            counts[1] += row["opened"]
            counts[2] += row["clicked"]
    opens = clicks = 0.0
    evidence = []
    skipped = []
    for name in analysis.removed:
        with_f, without = groups[name][True], groups[name][False]
        if with_f[0] < MIN_GROUP or without[0] < MIN_GROUP:
            skipped.append(name)
            continue
        opens += without[1] / without[0] - with_f[1] / with_f[0]
        clicks += without[2] / without[0] - with_f[2] / with_f[0]
        evidence.append(
            FeatureEvidence(
                feature=name, with_feature=_rates(with_f), without_feature=_rates(without)
            )
        )
    if not analysis.removed:
        basis = "no subject feature the model knows was changed: no change is expected"
    else:
        basis = (
            "for each subject feature the changes removed, the open and click rates of this "
            "account's delivered messages without it minus those with it, added up"
        )
        if skipped:
            basis += (
                f"; left out for want of {MIN_GROUP} messages on each side: {', '.join(skipped)}"
            )
    return (
        round(opens, 4),
        round(clicks, 4),
        Estimate(method="account_history", sample_size=delivered, basis=basis, evidence=evidence),
    )


def _rates(counts: list[int]) -> dict[str, float | int]:
    sent, opened, clicked = counts
    return {
        "delivered": sent,
        "opened": opened,
        "clicked": clicked,
        "open_rate": round(opened / sent, 4),
        "click_rate": round(clicked / sent, 4),
    }


# -- SpamAssassin ------------------------------------------------------------------------------


def spamassassin_program() -> str | None:
    return shutil.which("spamassassin")


def sample_message(
    content: Content,
    values: Mapping[str, Any] | None,
    *,
    track_opens: bool,
    tracker_url: str,
    sender: str = "sender@example.com",
) -> bytes:
    """The message as the composer builds it (text and html alternatives, List-Unsubscribe,
    the pixel where the composer would put one), with sample values for variables."""
    unsubscribe = f"{tracker_url}/u/sample"
    filled: dict[str, Any] = {"email": "recipient@example.org", "unsubscribe_url": unsubscribe}
    filled.update(values or {})

    def render(source: str) -> str:
        try:
            parsed = template.compile(source)
            for name in parsed.names:
                if template.lookup(filled, name) in (None, ""):
                    filled.setdefault(name, name.replace("_", " ").title())
            return parsed.render(filled, seed="sample")
        except template.TemplateError:
            return source

    message = EmailMessage()
    message["From"] = sender
    message["To"] = "recipient@example.org"
    # Every character Python's email package takes for a line break, as spaces.
    message["Subject"] = " ".join(render(content.subject).splitlines())
    message["Date"] = format_datetime(__import__("datetime").datetime.now().astimezone())
    message["Message-ID"] = make_msgid(domain="example.com")
    message["List-Unsubscribe"] = f"<{unsubscribe}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    text = render(content.text) if content.text is not None else None
    page = render(content.html) if content.html is not None else None
    if page is not None and track_opens and pixel_left_out(content.html or "") is None:
        page += (
            f'<img src="{tracker_url}/o/sample" width="1" height="1" alt="" '
            'style="display:block;border:0;width:1px;height:1px" />'
        )
    message.set_content(text or "", cte="quoted-printable")
    if page is not None:
        message.add_alternative(page, subtype="html", cte="quoted-printable")
    data = message.as_bytes()
    # Signed, as the MTA signs mail from a domain set up with `domains add` (the local rules
    # check that a signature exists, not that it verifies): unsigned, the one-click
    # List-Unsubscribe of a short message would score LIST_PARTIAL_SHORT_MSG.
    signature: bytes = dkim.sign(data, b"sample", b"example.com", _sample_key())
    return signature + data


@functools.cache
def _sample_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


async def spam_score(message: bytes, timeout: float) -> SpamScore:
    """SpamAssassin's local rules (-L: no DNS or network tests) over `message`."""
    program = spamassassin_program()
    assert program is not None
    process = await asyncio.create_subprocess_exec(
        program,
        "-L",
        "-t",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(message), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    return parse_report(out.decode("utf-8", "replace"))


def parse_report(output: str) -> SpamScore:
    """The score and the rules that hit, from `spamassassin -t`'s report."""
    head, _, _ = output.partition("\n\n")
    unfolded = re.sub(r"\n[ \t]+", " ", head)
    status = next(
        (line for line in unfolded.splitlines() if line.lower().startswith("x-spam-status:")), ""
    )
    found = _STATUS_SCORE.search(status)
    score = float(found.group(1)) if found else 0.0
    rules = []
    details = output.find("Content analysis details:")
    if details >= 0:
        lines = output[details:].splitlines()
        for line in lines[1:]:
            match = _REPORT_LINE.match(line)
            if match:
                rules.append(
                    SpamRule(
                        name=match.group(2), score=float(match.group(1)), description=match.group(3)
                    )
                )
            elif rules and line.startswith(" " * 10) and line.strip():
                last = rules[-1]
                rules[-1] = last.model_copy(
                    update={"description": f"{last.description} {line.strip()}"}
                )
            elif rules and not line.strip():
                break
    return SpamScore(score=score, rules=rules)


async def spamassassin(
    analysis: Analysis,
    values: Mapping[str, Any] | None,
    *,
    track_opens: bool,
    tracker_url: str,
    settings: AiSettings,
) -> SpamAssassinResult:
    if not settings.spamassassin:
        return SpamAssassinResult(available=False, reason="turned off ([ai] spamassassin)")
    if spamassassin_program() is None:
        return SpamAssassinResult(
            available=False,
            reason="SpamAssassin is not installed on the API server (Debian: apt-get install "
            "spamassassin)",
        )
    try:
        messages = [
            sample_message(c, values, track_opens=track_opens, tracker_url=tracker_url)
            for c in (analysis.original, analysis.optimized)
        ]
    except (ValueError, UnicodeError) as exc:  # a lone surrogate, a control character
        return SpamAssassinResult(
            available=False, reason=f"the content cannot be made into a message: {exc}"
        )
    try:
        original, optimized = await asyncio.gather(
            *(spam_score(m, settings.spamassassin_timeout) for m in messages)
        )
    except (TimeoutError, OSError) as exc:
        return SpamAssassinResult(available=False, reason=f"spamassassin did not answer: {exc!r}")
    return SpamAssassinResult(available=True, original=original, optimized=optimized)


# -- rewriting -------------------------------------------------------------------------------

REWRITE_PROMPT = (
    "You improve email subject lines for deliverability. Rewrite the subject so it keeps its "
    "meaning and language, uses no words in capitals, at most one exclamation or question "
    "mark, no spam-trigger phrases, and at most 60 characters. Keep every {{variable}} as "
    'written. Answer with JSON only: {"subject": "..."}'
)


async def rewrite_subject(
    subject: str, findings: list[str], settings: AiSettings
) -> tuple[str | None, str]:
    """(the model's subject or None, why not / which model)."""
    url = settings.rewrite_url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if settings.rewrite_api_key:
        headers["Authorization"] = f"Bearer {settings.rewrite_api_key}"
    body = {
        "model": settings.rewrite_model,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": REWRITE_PROMPT},
            {
                "role": "user",
                "content": orjson.dumps({"subject": subject, "problems": findings}).decode(),
            },
        ],
    }
    timeout = aiohttp.ClientTimeout(total=settings.rewrite_timeout)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(url, data=orjson.dumps(body), headers=headers) as response,
        ):
            if response.status != 200:
                return None, f"the endpoint answered HTTP {response.status}"
            answer = orjson.loads(await response.read())
        text = answer["choices"][0]["message"]["content"].strip()
    except (
        aiohttp.ClientError,
        TimeoutError,
        orjson.JSONDecodeError,
        KeyError,
        IndexError,
        TypeError,
    ) as exc:
        return None, f"the endpoint gave no usable answer: {exc!r}"
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text)
    try:
        parsed = orjson.loads(text)
        candidate = parsed["subject"] if isinstance(parsed, dict) else None
    except orjson.JSONDecodeError:
        candidate = text
    if not isinstance(candidate, str):
        return None, "the answer had no subject"
    candidate = candidate.strip()
    problems = subject_problems(candidate)
    if problems:
        return None, f"the model's subject {candidate!r} fails the checks ({', '.join(problems)})"
    try:
        if set(template.compile(candidate).names) != set(template.compile(subject).names):
            return None, "the model's subject changed the variables"
    except template.TemplateError:
        return None, "the model's subject is not a valid template"
    return candidate, settings.rewrite_model or "model"


# -- the whole analysis ----------------------------------------------------------------------


async def optimize(
    pool: asyncpg.Pool | asyncpg.Connection,
    tenant_id: int,
    body: OptimizeRequest,
    ai: AiSettings,
    tracker_url: str,
) -> OptimizeResult:
    content = Content(body.content.subject, body.content.html, body.content.text)
    tracking = body.tracking
    analysis = analyse(
        content,
        track_opens=tracking.track_opens,
        track_clicks=tracking.track_clicks,
        plain_text=tracking.plain_text,
        personalization=body.personalization,
    )
    rewriting = Rewriting(requested=body.rewrite, used=False)
    if body.rewrite:
        if not ai.rewrite_url:
            rewriting.reason = "no language model is configured ([ai] rewrite_url)"
        else:
            start = analysis.optimized.subject
            problems = [f.message for f in analysis.findings if f.part == "subject"]
            candidate, said = await rewrite_subject(start, problems, ai)
            if candidate is None:
                rewriting.reason = said
            else:
                rewriting = Rewriting(requested=True, used=candidate != start, model=said)
                if candidate != start:
                    analysis.changes.append(
                        RuleChange(
                            "subject",
                            start,
                            candidate,
                            "model",
                            said,
                            f"rewritten by {said} at the operator's endpoint; it passes the "
                            "subject checks and keeps the variables",
                        )
                    )
                    analysis.optimized = Content(
                        candidate, analysis.optimized.html, analysis.optimized.text
                    )
                    after = subject_features(candidate)
                    analysis.removed = [
                        n for n, present in analysis.features.items() if present and not after[n]
                    ]
                else:
                    rewriting.reason = "the model kept the subject as it was"
    opens, clicks, how = await estimate(pool, tenant_id, analysis, ai)
    feeling = sentiment(analysis.optimized)
    spam = await spamassassin(
        analysis,
        body.personalization,
        track_opens=tracking.track_opens and not tracking.plain_text,
        tracker_url=tracker_url,
        settings=ai,
    )
    return OptimizeResult(
        original=_content_out(analysis.original),
        optimized=_content_out(analysis.optimized),
        improvements=Improvements(
            expected_open_rate_increase=opens,
            expected_click_rate_increase=clicks,
            sentiment_score=feeling.compound,
            sentiment=feeling,
            estimate=how,
        ),
        changes=[ContentChange(**vars(c)) for c in analysis.changes],
        findings=[ContentFinding(**vars(f)) for f in analysis.findings],
        spamassassin=spam,
        rewriting=rewriting,
    )


def _content_out(content: Content) -> OptimizedContent:
    return OptimizedContent(subject=content.subject, html=content.html, text=content.text)


@API.route(
    "POST",
    "/ai/optimize-content",
    summary="Check content for what trips filters, fix what can be fixed without changing its "
    "words, and estimate the effect from this account's own history",
    tag="AI",
    tier="professional",
    body=OptimizeRequest,
    response=OptimizeResult,
)
async def optimize_content(call: Call[OptimizeRequest, None]) -> OptimizeResult:
    settings = call.state.settings
    return await optimize(
        call.pool, call.principal.tenant_id, call.body, settings.ai, settings.tracker.base_url
    )


async def campaign_summary(
    conn: asyncpg.Connection,
    tenant_id: int,
    tier: str,
    content: Content,
    written: Mapping[str, Any],
    ai: AiSettings,
) -> CampaignAiOptimization:
    """`ai_optimization` of a campaign created with it on: the rules and the estimate, as
    suggestions; the campaign's content is left as it was."""
    if not at_least(tier, "professional"):
        return CampaignAiOptimization(
            enabled=True, improvement_score=None, suggestions=[], left_out="professional"
        )
    analysis = analyse(
        content,
        track_opens=written.get("track_opens") is True,
        track_clicks=written.get("track_clicks") is True,
        plain_text=written.get("plain_text") is True,
    )
    opens, _, how = await estimate(conn, tenant_id, analysis, ai)
    suggestions = [
        f"{c.part}: {c.reason} ({c.before!r} -> {c.after!r})"
        for c in analysis.changes
        if c.part == "subject"
    ]
    suggestions += [
        f"{f.part}: {f.message}" + (f" ({', '.join(f.evidence)})" if f.evidence else "")
        for f in analysis.findings
        if f.severity != "info"
    ]
    return CampaignAiOptimization(
        enabled=True, improvement_score=opens, suggestions=suggestions, estimate=how
    )


# -- analytics' ai_insights ------------------------------------------------------------------

# A subject variant needs this many delivered messages to be compared; a recipient domain
# this many verdicts (delivered or bounced) to be named for its bounces.
MIN_VARIANT = 20
MIN_DOMAIN = 5
HIGH_BOUNCE_RATE = 0.10
MIN_HOUR = 30


async def campaign_insights(
    pool: asyncpg.Pool, tenant_id: int, campaign_id: int, ai: AiSettings
) -> AiInsights:
    """Findings from the campaign's own numbers and the account's history, each with its
    evidence; none where the numbers are too few to say anything."""
    found: list[AiInsight] = []
    variants = [
        r
        for r in await pool.fetch(SQL["campaign_subjects"], campaign_id)
        if r["delivered"] >= MIN_VARIANT
    ]
    if len(variants) >= 2:
        ranked = sorted(variants, key=lambda r: (-r["opened"] / r["delivered"], r["subject"]))
        best, second = ranked[0], ranked[1]
        z = _two_proportion_z(
            best["opened"], best["delivered"], second["opened"], second["delivered"]
        )
        found.append(
            AiInsight(
                type="subject_line",
                finding=f"the subject {best['subject']!r} had the higher open rate "
                f"({best['opened']}/{best['delivered']}) than {second['subject']!r} "
                f"({second['opened']}/{second['delivered']})"
                + ("" if abs(z) >= 1.96 else "; the difference is not significant yet"),
                evidence={
                    "winner": best["subject"],
                    "sample": best["delivered"],
                    "variants": [_variant(r) for r in ranked],
                    "z": round(z, 3),
                    "significant": abs(z) >= 1.96,
                },
            )
        )
    hours = [r for r in await pool.fetch(SQL["send_hours"], tenant_id, HISTORY_LIMIT)]
    total = sum(r["delivered"] for r in hours)
    counted = [r for r in hours if r["delivered"] >= MIN_HOUR]
    if total >= ai.min_history and len(counted) >= 2:
        counted.sort(key=lambda r: (-r["opened"] / r["delivered"], r["hour"]))
        top = counted[0]
        found.append(
            AiInsight(
                type="send_time",
                finding=f"messages delivered at {top['hour']:02d}:00 UTC had this account's "
                f"best open rate ({top['opened']}/{top['delivered']})",
                evidence={
                    "sample": total,
                    "hours": [
                        {
                            "hour_utc": r["hour"],
                            "delivered": r["delivered"],
                            "opened": r["opened"],
                            "open_rate": round(r["opened"] / r["delivered"], 4),
                        }
                        for r in counted
                    ],
                },
            )
        )
    for row in await pool.fetch(SQL["campaign_bounce_domains"], campaign_id):
        rate = row["bounced"] / row["attempted"]
        if row["attempted"] >= MIN_DOMAIN and rate >= HIGH_BOUNCE_RATE:
            found.append(
                AiInsight(
                    type="recipient_domain",
                    finding=f"{row['domain']} bounced {row['bounced']} of "
                    f"{row['attempted']} messages: check these addresses before sending again",
                    evidence={
                        "domain": row["domain"],
                        "attempted": row["attempted"],
                        "bounced": row["bounced"],
                        "bounce_rate": round(rate, 4),
                    },
                )
            )
    return AiInsights(recommendations=found)


def _variant(row: asyncpg.Record) -> dict[str, Any]:
    return {
        "subject": row["subject"],
        "delivered": row["delivered"],
        "opened": row["opened"],
        "clicked": row["clicked"],
        "replied": row["replied"],
        "open_rate": round(row["opened"] / row["delivered"], 4),
    }


def _two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float:
    pooled = (x1 + x2) / (n1 + n2)
    spread = (pooled * (1 - pooled) * (1 / n1 + 1 / n2)) ** 0.5
    return (x1 / n1 - x2 / n2) / spread if spread else 0.0


# -- analyze-contact -------------------------------------------------------------------------

# Mailboxes of a function rather than a person: mail to them reaches whoever reads the queue,
# and cold mail to them is what complaint buttons are pressed on.
ROLE_LOCAL_PARTS = frozenset(
    "abuse accounting accounts admin administrator billing careers contact contactus "
    "customerservice enquiries finance hello help helpdesk hostmaster hr info inquiries jobs "
    "legal mail marketing media no-reply noreply office orders postmaster press privacy "
    "sales security service support team webmaster".split()
)
# Consumer webmail: a person's own address, not a company's domain.
FREE_MAIL = frozenset(
    "163.com 126.com aol.com fastmail.com gmail.com googlemail.com gmx.com gmx.de gmx.net "
    "hey.com hotmail.co.uk hotmail.com hotmail.fr icloud.com live.com mac.com mail.com "
    "mail.ru me.com msn.com outlook.com pm.me proton.me protonmail.com qq.com "
    "tutanota.com web.de yahoo.co.uk yahoo.com yahoo.fr yandex.com yandex.ru zoho.com".split()
)
# Who hosts a domain's mail, by the end of its MX host names.
MX_PROVIDERS = (
    ("google.com", "Google"),
    ("googlemail.com", "Google"),
    ("outlook.com", "Microsoft"),
    ("hotmail.com", "Microsoft"),
    ("yahoodns.net", "Yahoo"),
    ("icloud.com", "Apple iCloud"),
    ("zoho.com", "Zoho"),
    ("zoho.eu", "Zoho"),
    ("protonmail.ch", "Proton"),
    ("messagingengine.com", "Fastmail"),
    ("pphosted.com", "Proofpoint"),
    ("mimecast.com", "Mimecast"),
    ("barracudanetworks.com", "Barracuda"),
    ("secureserver.net", "GoDaddy"),
    ("mail.ovh.net", "OVH"),
    ("ovh.net", "OVH"),
    ("yandex.net", "Yandex"),
    ("qq.com", "Tencent"),
)


def mx_resolver(settings: MtaSettings) -> dns.asyncresolver.Resolver:
    """A resolver like the MTA's ([mta] dns_servers, else the system's): the answer is about
    the MX hosts the MTA would deliver to."""
    resolver = dns.asyncresolver.Resolver(configure=not settings.dns_servers)
    if settings.dns_servers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*split_hostport(s)) for s in settings.dns_servers
        ]
    resolver.lifetime = settings.dns_timeout
    return resolver


def mx_provider(hosts: list[str]) -> str | None:
    for host in hosts:
        for suffix, name in MX_PROVIDERS:
            if host == suffix or host.endswith("." + suffix):
                return name
    return None


async def _mx(
    resolver: dns.asyncresolver.Resolver, domain: str
) -> tuple[list[str], bool | None, str | None]:
    """(MX hosts by preference, whether the domain accepts mail, the DNS error if any)."""
    try:
        answer = await resolver.resolve(domain, "MX")
        records = sorted(answer, key=lambda r: r.preference)
        hosts = [r.exchange.to_text(omit_final_dot=True).lower() for r in records]
        if hosts == [""] or hosts == ["."]:
            return [], False, None  # RFC 7505 null MX: the domain takes no mail
        return hosts, True, None
    except dns.resolver.NXDOMAIN:
        return [], False, None
    except dns.resolver.NoAnswer:
        pass
    except dns.exception.DNSException as exc:
        return [], None, f"MX lookup failed: {exc.__class__.__name__}"
    # No MX: an address record is the implicit MX (RFC 5321 5.1).
    for rdtype in ("A", "AAAA"):
        try:
            await resolver.resolve(domain, rdtype)
            return [], True, None
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        except dns.exception.DNSException as exc:
            return [], None, f"{rdtype} lookup failed: {exc.__class__.__name__}"
    return [], False, None


@API.route(
    "POST",
    "/ai/analyze-contact",
    summary="What can be derived locally about a contact: role or person, free mail or "
    "company, its domain's mail provider and MX, past engagement with this account",
    tag="AI",
    tier="professional",
    body=ContactAnalysisRequest,
    response=ContactAnalysis,
)
async def analyze_contact(call: Call[ContactAnalysisRequest, None]) -> ContactAnalysis:
    body = call.body
    email = body.email.strip() if body.email is not None else None
    result = ContactAnalysis(
        email=email,
        syntax_valid=None,
        role_address=None,
        free_mail=None,
        domain=None,
        mx_hosts=[],
        mx_provider=None,
        accepts_mail=None,
        engagement=None,
        company=body.company,
        lifecycle_stage=body.lifecycle_stage,
    )
    if email is None:
        return result
    try:
        domain = address_domain(email, "email")
    except InvalidMessage:
        result.syntax_valid = False
        return result
    local = email.rsplit("@", 1)[0].lower()
    result.syntax_valid = True
    result.domain = domain
    result.role_address = local.split("+", 1)[0] in ROLE_LOCAL_PARTS
    result.free_mail = domain in FREE_MAIL
    hosts, accepts, error = await _mx(mx_resolver(call.state.settings.mta), domain)
    result.mx_hosts, result.accepts_mail, result.dns_error = hosts, accepts, error
    result.mx_provider = mx_provider(hosts)
    row = await call.pool.fetchrow(SQL["contact_engagement"], call.principal.tenant_id, email)
    result.engagement = ContactEngagement(**dict(row))
    return result
