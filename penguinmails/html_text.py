"""The plain-text alternative of an html-only send, derived from its html.

In the foundation because two roles need it alike: the MTA writes the text part of every
html-only message with it, and the API's template preview shows that same text.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import Any

from penguinmails import template

# An href attribute, its value double-, single- or un-quoted (groups 2, 3, 4); group 1 is
# everything before the value. Link tracking reads links with it too.
HREF = re.compile(
    r"""(?<![\w-])(href\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'<>`]+))""", re.IGNORECASE
)
# Elements whose content is no text (and comments), dropped whole: an opener, then the first
# closer after it.
_DROP_OPEN = re.compile(r"<(head|style|script|title)\b|<!--", re.IGNORECASE)
_DROP_CLOSE = {
    name: re.compile(rf"</{name}\s*>", re.IGNORECASE)
    for name in ("head", "style", "script", "title")
}
_TAG_NAME = re.compile(r"</?([A-Za-z][A-Za-z0-9]*)")
_BLOCKS = frozenset(
    "p div h1 h2 h3 h4 h5 h6 li tr table blockquote ul ol section article header footer".split()
)


def derived_text(source: str, page: str, values: Mapping[str, Any], seed: str) -> str:
    """The text part of an html-only send: from a text template derived from the html
    template once per campaign (values then go in unescaped, spintax picks as in the html),
    or, when that derivation is not itself a valid template, from this rendered page.
    """
    derived = _text_template(source)
    if derived is None:
        return html_to_text(page)
    try:
        return derived.render(values, seed=seed)
    except template.TemplateError:
        return html_to_text(page)


@lru_cache(maxsize=512)
def _text_template(html_source: str) -> template.Template | None:
    try:
        return template.Template(html_to_text(html_source))
    except template.TemplateError:
        return None


def html_to_text(page: str) -> str:
    """A readable plain-text alternative for html-only sends; links as `text (url)`.

    One pass over the tags with string methods for the rest: this runs per message, and a
    chain of regular-expression passes over the whole page cost several times as much.
    """
    page = _drop(page)
    out: list[str] = []
    link_url: str | None = None
    link_start = pos = 0
    for start, end in _tags(page):
        if start > pos:
            out.append(page[pos:start].replace("\r", " ").replace("\n", " "))
        pos = end
        tag = page[start:end]
        name_match = _TAG_NAME.match(tag)
        if name_match is None:
            continue
        name = name_match.group(1).lower()
        closing = tag[1] == "/"
        if name == "a":
            if not closing:
                href = HREF.search(tag)
                link_url = next(g for g in href.groups()[1:] if g is not None) if href else None
                link_start = len(out)
            elif link_url is not None:
                label = " ".join("".join(out[link_start:]).split())
                url = link_url.strip()
                if url and not url.lower().startswith("mailto:"):
                    if html.unescape(label) != html.unescape(url):
                        out.append(f" ({url})" if label else url)
                link_url = None
        elif name == "br":
            out.append("\n")
        elif closing and name in _BLOCKS:
            out.append("\n\n")
        elif name == "li":
            out.append("\n- ")
    out.append(page[pos:].replace("\r", " ").replace("\n", " "))
    text = "".join(out)
    if "&" in text:
        text = html.unescape(text)
    lines: list[str] = []
    for raw in text.split("\n"):
        line = " ".join(raw.split())
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


# Both scans below are linear in the page. A regular expression that looks for the end of
# each opener (`<[^>]*>`, `<style.*?</style>`) rescans the rest of the page for every opener
# that has none, so a page of 100,000 `<!--` held a worker (or the API's preview) for minutes.


def _tags(page: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each `<...>`: from a `<` to the first `>` after it."""
    pos = 0
    while (start := page.find("<", pos)) >= 0:
        end = page.find(">", start + 1)
        if end < 0:
            return  # no `>` after this `<`, so none after any later one either
        yield start, end + 1
        pos = end + 1


def _drop(page: str) -> str:
    """The page without head, style, script and title elements and comments."""
    out: list[str] = []
    pos = 0
    unclosed: set[str] = set()  # a closer missing after one opener is missing after later ones
    while (opener := _DROP_OPEN.search(page, pos)) is not None:
        name = (opener.group(1) or "!--").lower()
        end = -1
        if name not in unclosed:
            if name == "!--":
                close = page.find("-->", opener.end())
                end = close + 3 if close >= 0 else -1
            else:
                closer = _DROP_CLOSE[name].search(page, opener.end())
                end = closer.end() if closer is not None else -1
            if end < 0:
                unclosed.add(name)
        if end < 0:
            out.append(page[pos : opener.end()])
            pos = opener.end()
        else:
            out.append(page[pos : opener.start()])
            pos = end
    out.append(page[pos:])
    return "".join(out)


# SpamAssassin's HTML_IMAGE_ONLY_04 ... _32 fire on html that shows an image and has less
# than 3200 bytes of text (20_html_tests.cf; 0.6 to 2.8 points each in the local score set).
# Our open pixel is an image: in an html part without images of its own and with less text
# than this, adding it would turn an ordinary short message into an "image only" one.
PIXEL_MIN_TEXT = 3200
_IMG = re.compile(r"<img\b", re.IGNORECASE)


def pixel_left_out(page: str) -> str | None:
    """Why the open pixel must stay out of this html, or None when it may go in: a page
    that already shows images is judged on them, a page with enough text is not "image
    only" with one more 1x1 image."""
    if _IMG.search(page):
        return None
    visible = len(html_to_text(page).encode("utf-8"))
    if visible >= PIXEL_MIN_TEXT:
        return None
    return (
        f"the html has {visible} bytes of text and no image; with the 1x1 open pixel it "
        f"would look image-only to filters (SpamAssassin HTML_IMAGE_ONLY_* below "
        f"{PIXEL_MIN_TEXT} bytes)"
    )
