"""The deterministic half of content analysis: checks that explain themselves, and the few
fixes that change no meaning (letter case, repeated punctuation, a text part derived from the
html). Pure functions over the content as written (our template syntax included); api.ai adds
sentiment, the estimate, SpamAssassin and optional rewriting.

Each finding names its check, the part it is about and the evidence; each change names the
rule that made it and why. A fix is only made where the same words survive it: a spam-trigger
phrase is reported, never reworded by a rule.
"""

from __future__ import annotations

import html as html_lib
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from penguinmails import template
from penguinmails.html_text import HREF, PIXEL_MIN_TEXT, html_to_text, pixel_left_out

Severity = Literal["high", "medium", "low", "info"]
Part = Literal["subject", "html", "text"]

# Gmail shows about 60 characters of a subject on a desktop, fewer on a phone.
MAX_SUBJECT = 60
MAX_LINKS = 3  # a cold message with more links than this reads as a newsletter to filters
# Phrases that content filters and their users' training associate with bulk promotion
# (SpamAssassin's own body rules and the common "spam trigger" lists agree on these).
SPAM_PHRASES = (
    "100% free",
    "act now",
    "apply now",
    "as seen on",
    "buy now",
    "call now",
    "cash bonus",
    "click here",
    "don't miss",
    "double your",
    "earn money",
    "exclusive deal",
    "free gift",
    "free trial",
    "guaranteed",
    "limited time",
    "lowest price",
    "make money",
    "no credit check",
    "no obligation",
    "offer expires",
    "order now",
    "risk-free",
    "risk free",
    "special promotion",
    "this isn't spam",
    "urgent",
    "winner",
    "you have been selected",
    "% off",
)
URL_SHORTENERS = frozenset(
    "bit.ly buff.ly cutt.ly goo.gl is.gd ow.ly rb.gy rebrand.ly shorturl.at t.co t.ly "
    "tiny.cc tinyurl.com".split()
)
# All-capital words that are ordinary in business mail and stay as written.
ACRONYMS = frozenset(
    "AI API B2B B2C CEO CFO CMO COO CRM CSS CTO CSV EU EUR FAQ GBP GDPR HR HTML HTTP IT KPI "
    "PDF PR Q1 Q2 Q3 Q4 ROI SAAS SDK SEO SLA SMS SMTP SQL SSO UK UI URL US USA USD UX VP".split()
)
_CAPS_WORD = re.compile(r"\b[A-Z][A-Z']{2,}\b")
_PUNCT_RUN = re.compile(r"([!?])[!?]+")
_VARIABLE = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_A_ELEMENT = re.compile(r"(<a\b[^>]*>)(.*?)</a\s*>", re.IGNORECASE | re.DOTALL)
_IMG = re.compile(r"<img\b[^>]*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_URL = re.compile(r"https?://[^\s<>\"')]+", re.IGNORECASE)
_DOMAIN_TEXT = re.compile(r"^(?:https?://)?(?:www\.)?([a-z0-9-]+(?:\.[a-z0-9-]+)+)(?:[/?#].*)?$")


@dataclass(frozen=True)
class Finding:
    check: str
    severity: Severity
    part: Part
    message: str
    evidence: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Change:
    part: Part
    before: str
    after: str
    made_by: Literal["rule", "model"]
    rule: str
    reason: str


@dataclass(frozen=True)
class Content:
    subject: str
    html: str | None
    text: str | None


@dataclass
class Analysis:
    original: Content
    optimized: Content
    findings: list[Finding]
    changes: list[Change]
    # What the estimate in api.ai compares against the account's history.
    features: dict[str, bool]
    removed: list[str]


def subject_features(subject: str) -> dict[str, bool]:
    """The subject features the account's own model is fitted on (api.ai)."""
    return {
        "all_caps": bool(_caps_words(subject)),
        "excess_punctuation": _excess_punctuation(subject),
        "long_subject": len(subject) > MAX_SUBJECT,
        "spam_phrase": bool(_phrases(subject)),
    }


def analyse(
    content: Content,
    *,
    track_opens: bool = True,
    track_clicks: bool = True,
    plain_text: bool = False,
    personalization: Mapping[str, Any] | None = None,
) -> Analysis:
    findings: list[Finding] = []
    changes: list[Change] = []
    subject, page, text = content.subject, content.html, content.text
    if plain_text and page is not None:
        if text is None:
            text = html_to_text(page)
            changes.append(
                Change(
                    "text",
                    "",
                    text,
                    "rule",
                    "plain_text",
                    "a plain-text send carries the text part alone; this is the text "
                    "derived from the html, as the composer derives it",
                )
            )
        page = None

    # -- the subject --
    fixed = _fix_caps(subject)
    caps = _caps_words(subject)
    if caps:
        findings.append(
            Finding(
                "subject_all_caps",
                "high",
                "subject",
                "words in capitals read as shouting and are a spam signal "
                "(SpamAssassin's SUBJ_ALL_CAPS and its relatives)",
                caps,
            )
        )
    if _excess_punctuation(subject):
        findings.append(
            Finding(
                "subject_punctuation",
                "high",
                "subject",
                "repeated or several exclamation and question marks are a spam signal",
                [m.group(0) for m in re.finditer(r"[!?]{2,}", subject)]
                or [f"{subject.count('!')} exclamation marks"],
            )
        )
        fixed = _fix_punctuation(fixed)
    if fixed != subject:
        reasons = []
        if caps:
            reasons.append(f"{', '.join(caps)} in ordinary capitals")
        if _excess_punctuation(subject):
            reasons.append("one punctuation mark where there were several")
        changes.append(
            Change(
                "subject",
                subject,
                fixed,
                "rule",
                "subject_case_and_punctuation",
                "; ".join(reasons) + ": the same words without the shouting",
            )
        )
    if len(subject) > MAX_SUBJECT:
        findings.append(
            Finding(
                "subject_length",
                "medium",
                "subject",
                f"longer than {MAX_SUBJECT} characters: mail clients cut it off",
                [f"{len(subject)} characters"],
            )
        )
    elif not subject.strip():
        findings.append(Finding("subject_length", "high", "subject", "the subject is empty"))

    # -- the body --
    visible = html_to_text(page) if page is not None else ""
    for part_name, source in (("html", page), ("text", text)):
        if source is None:
            continue
        body_text = visible if part_name == "html" else source
        words = _caps_words(body_text)
        if words:
            findings.append(
                Finding(
                    "body_all_caps",
                    "medium",
                    part_name,  # type: ignore[arg-type]
                    "words in capitals read as shouting and are a spam signal",
                    words,
                )
            )
            after = _fix_caps_in_html(source) if part_name == "html" else _fix_caps(source)
            if after != source:
                changes.append(
                    Change(
                        part_name,  # type: ignore[arg-type]
                        source,
                        after,
                        "rule",
                        "body_case",
                        f"{', '.join(words)} in ordinary capitals: the same words without "
                        "the shouting",
                    )
                )
                if part_name == "html":
                    page = after
                else:
                    text = after
    everything = " ".join(filter(None, [subject, visible, content.text or ""]))
    phrases = _phrases(everything)
    if phrases:
        findings.append(
            Finding(
                "spam_phrases",
                "medium",
                "subject" if _phrases(subject) else ("html" if page is not None else "text"),
                "phrases that filters and recipients associate with bulk promotion; say "
                "what you offer in your own words (not changed automatically: it would "
                "change what you say)",
                phrases,
            )
        )

    if page is not None:
        findings += _html_findings(page, visible, track_opens=track_opens, clicks=track_clicks)
        if text is None:
            derived = html_to_text(page)
            findings.append(
                Finding(
                    "missing_text_part",
                    "low",
                    "text",
                    "no text part given: the composer derives one from the html (shown in "
                    "`optimized.text`); a text part you write yourself reads better",
                )
            )
            changes.append(
                Change(
                    "text",
                    "",
                    derived,
                    "rule",
                    "text_part",
                    "multipart/alternative with a text part is what filters expect; this is "
                    "the text the composer would derive from the html",
                )
            )
            text = derived
    if text is not None:
        findings += _link_findings(_URL.findall(text), "text")

    sources = [s for s in (content.subject, content.html, content.text) if s]
    if not any("unsubscribe_url" in s for s in sources):
        findings.append(
            Finding(
                "unsubscribe",
                "info",
                "html" if content.html is not None else "text",
                "no visible unsubscribe link ({{unsubscribe_url}}); every message carries "
                "one-click List-Unsubscribe headers anyway, but bulk mail should show one "
                "too",
            )
        )
    findings += _personalization_findings(content, personalization)
    optimized = Content(_fix_subject_final(subject, changes), page, text)
    features = subject_features(content.subject)
    then = subject_features(optimized.subject)
    removed = [name for name, present in features.items() if present and not then[name]]
    return Analysis(content, optimized, findings, changes, features, removed)


def _fix_subject_final(subject: str, changes: list[Change]) -> str:
    for change in changes:
        if change.part == "subject":
            return change.after
    return subject


def subject_problems(subject: str) -> list[str]:
    """What a rewritten subject must not have (api.ai checks a model's answer with it)."""
    problems = [name for name, present in subject_features(subject).items() if present]
    if not subject.strip() or "\n" in subject or "\r" in subject:
        problems.append("empty or several lines")
    return problems


# -- the checks ----------------------------------------------------------------------------


def _caps_words(text: str) -> list[str]:
    text = _VARIABLE.sub(" ", text)
    found = [w for w in _CAPS_WORD.findall(text) if w.replace("'", "") not in ACRONYMS]
    return list(dict.fromkeys(found))


def _fix_caps(text: str) -> str:
    def word(match: re.Match[str]) -> str:
        value = match.group(0)
        return value if value.replace("'", "") in ACRONYMS else value.capitalize()

    # Variables and spintax stay as written: `{{NAME}}` is a key, not a word.
    pieces = re.split(r"(\{\{.*?\}\})", text)
    return "".join(p if p.startswith("{{") else _CAPS_WORD.sub(word, p) for p in pieces)


def _fix_caps_in_html(page: str) -> str:
    """The capitals fix in the text between tags only: attributes and URLs stay."""
    pieces = re.split(r"(<[^>]*>)", page)
    return "".join(p if p.startswith("<") else _fix_caps(p) for p in pieces)


def _excess_punctuation(subject: str) -> bool:
    return bool(re.search(r"[!?]{2,}", subject)) or subject.count("!") > 1


def _fix_punctuation(subject: str) -> str:
    subject = _PUNCT_RUN.sub(r"\1", subject)
    if subject.count("!") > 1:  # keep the last one only
        last = subject.rfind("!")
        subject = subject[:last].replace("!", "") + subject[last:]
    return re.sub(r"\s{2,}", " ", subject).strip()


def _phrases(text: str) -> list[str]:
    lowered = _VARIABLE.sub(" ", text).lower().replace("\u2019", "'")
    return [p for p in SPAM_PHRASES if p in lowered]


def _host(url: str) -> str:
    try:
        host = urllib.parse.urlsplit(url.strip()).hostname or ""
    except ValueError:
        return ""
    return host.lower().removeprefix("www.")


def _link_findings(urls: list[str], part: Part) -> list[Finding]:
    short = sorted({u for u in urls if _host(u) in URL_SHORTENERS})
    if not short:
        return []
    return [
        Finding(
            "url_shortener",
            "high",
            part,
            "link shorteners hide where a link goes and are on filters' lists; link to "
            "the page itself",
            short,
        )
    ]


def _html_findings(page: str, visible: str, *, track_opens: bool, clicks: bool) -> list[Finding]:
    findings: list[Finding] = []
    links = []
    for match in _A_ELEMENT.finditer(page):
        href = HREF.search(match.group(1))
        if href is None:
            continue
        url = html_lib.unescape(next(g for g in href.groups()[1:] if g is not None)).strip()
        label = " ".join(html_lib.unescape(_TAG.sub(" ", match.group(2))).split())
        links.append((url, label, match.group(1)))
    web = [(u, lbl, tag) for u, lbl, tag in links if u.lower().startswith(("http://", "https://"))]
    if len(web) > MAX_LINKS:
        findings.append(
            Finding(
                "link_count",
                "medium",
                "html",
                f"more than {MAX_LINKS} links: a personal message has one or two",
                [f"{len(web)} links"],
            )
        )
    findings += _link_findings([u for u, _, _ in web], "html")
    for url, label, tag in web:
        shown = _DOMAIN_TEXT.match(label.lower())
        if shown is None:
            continue
        if shown.group(1).removeprefix("www.") != _host(url):
            findings.append(
                Finding(
                    "mismatched_link_text",
                    "high",
                    "html",
                    "the link text shows one address and the link goes to another: the "
                    "pattern of phishing, which filters score high",
                    [f"{label} -> {url}"],
                )
            )
        elif clicks and "data-pm-notrack" not in tag.lower():
            findings.append(
                Finding(
                    "tracked_address_link",
                    "medium",
                    "html",
                    "the link text is an address, and click tracking will send it through "
                    "the tracker's address: mark the link data-pm-notrack (or turn click "
                    "tracking off) so text and target agree",
                    [label],
                )
            )
    images = _IMG.findall(page)
    size = len(visible.encode("utf-8"))
    if images and size < PIXEL_MIN_TEXT:
        findings.append(
            Finding(
                "image_to_text",
                "medium",
                "html",
                f"images with little text (under {PIXEL_MIN_TEXT} bytes): filters score such "
                "mail as image-only (SpamAssassin HTML_IMAGE_ONLY_*); add text or drop images",
                [f"{len(images)} images", f"{size} bytes of text"],
            )
        )
    if track_opens:
        reason = pixel_left_out(page)
        if reason is not None:
            findings.append(
                Finding(
                    "open_pixel_left_out",
                    "info",
                    "html",
                    f"opens cannot be tracked in this message: {reason}. It is sent without "
                    "the pixel; a plain-text send (`plain_text: true`) is the honest "
                    "choice for a short message",
                    [f"{size} bytes of text"],
                )
            )
    return findings


def _personalization_findings(content: Content, values: Mapping[str, Any] | None) -> list[Finding]:
    findings: list[Finding] = []
    for part_name, source in (
        ("subject", content.subject),
        ("html", content.html),
        ("text", content.text),
    ):
        if not source:
            continue
        try:
            parsed = template.compile(source)
        except template.TemplateError as exc:
            findings.append(Finding("template", "high", part_name, str(exc)))  # type: ignore[arg-type]
            continue
        blank = sorted(set(_empty_defaults(parsed.nodes)))
        if blank:
            findings.append(
                Finding(
                    "personalization_empty",
                    "medium",
                    part_name,  # type: ignore[arg-type]
                    "a variable whose default is empty renders nothing for a recipient "
                    'without it ("Hi ," ): give it a default that reads well',
                    blank,
                )
            )
        if values is None:
            continue
        missing = [n for n in parsed.required if n not in template.BUILTINS and n not in values]
        empty = [
            n for n in parsed.required if n in values and (values[n] is None or values[n] == "")
        ]
        if missing:
            findings.append(
                Finding(
                    "personalization_missing",
                    "high",
                    part_name,  # type: ignore[arg-type]
                    "the sample recipient has no value for these variables and they have no "
                    "default: such a send is refused",
                    missing,
                )
            )
        if empty:
            findings.append(
                Finding(
                    "personalization_empty",
                    "medium",
                    part_name,  # type: ignore[arg-type]
                    "the sample recipient's value is empty: the message would show nothing there",
                    empty,
                )
            )
    return findings


def _empty_defaults(nodes: Any) -> list[str]:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, template.Var):
            if node.literal is None and node.default == "":
                out.append(node.name)
        elif isinstance(node, template.Spin):
            for option in node.options:
                out += _empty_defaults(option)
    return out
