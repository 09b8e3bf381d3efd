"""Open and click tracking in a rendered html page: links through the tracker, the pixel.

Tracking is opt-in: the row's `settings` must say `track_opens` / `track_clicks` true. Cold
mail lands better without pixels and rewritten links, so nothing is tracked unless the send
asked for it; the API writes its defaults explicitly.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping, Set
from functools import lru_cache
from typing import Any

from mta.headers import CONTROL
from penguinmails.html_text import HREF, pixel_left_out

# `[aA]` rather than IGNORECASE: the same matches, and the scan over the page runs about a
# third faster without case folding.
_A_TAG = re.compile(r"<[aA]\b[^>]*>")
_NOTRACK = re.compile(r"(?<![\w-])data-pm-notrack(?![\w-])", re.IGNORECASE)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_TAIL = 4096


def tracking_requested(settings: Mapping[str, Any] | None) -> tuple[bool, bool]:
    """(opens, clicks): on only when the send asked for it."""
    settings = settings or {}
    return settings.get("track_opens") is True, settings.get("track_clicks") is True


def plain_text_requested(settings: Mapping[str, Any] | None) -> bool:
    """The send asked for its text part alone (`plain_text`): no html part, so no pixel and
    no rewritten links; cold first touches land better as plain text."""
    return (settings or {}).get("plain_text") is True


def pixel_fits(settings: Mapping[str, Any] | None, page: str) -> bool:
    """Whether the open pixel may go into this rendered page. The message's own tracking
    state decides when it has one (`open_pixel`, written when it was queued:
    penguinmails.messages.tracking_settings); a row without it (queued before, or by a
    path that does not write it) is judged on the page itself, by the same rule."""
    settings = settings or {}
    if "open_pixel" in settings:
        return settings["open_pixel"] is not False
    return pixel_left_out(page) is None


def rewrite_links(
    page: str, click_url: Callable[[int, str], str], *, keep: Set[str] = frozenset()
) -> str:
    """Every http(s) link through the tracker; `click_url(index, url)` makes the new URL.

    The index counts rewritten links from 0 in document order. Links marked
    `data-pm-notrack`, mailto: and other schemes, and the URLs in `keep` (the message's own
    unsubscribe link: a click redirect in front of it would only slow it down) are left
    as they are.
    """
    index = 0

    def tag(match: re.Match[str]) -> str:
        nonlocal index
        parsed = _trackable(match.group(0))
        if parsed is None or parsed[1] in keep:
            return match.group(0)
        before, url, after = parsed
        new = click_url(index, url)
        index += 1
        if "&" in new or '"' in new:  # only a strange tracker base_url would need it
            new = html.escape(new)
        return f'{before}"{new}"{after}'

    return _A_TAG.sub(tag, page)


@lru_cache(maxsize=4096)
def _trackable(tag: str) -> tuple[str, str, str] | None:
    """(text before the href value, the URL, text after) for a link to track, else None.

    Cached: a campaign's links are the same tags for every recipient.
    """
    if _NOTRACK.search(tag):
        return None
    href = HREF.search(tag)
    if href is None:
        return None
    raw = next(g for g in href.groups()[1:] if g is not None)
    url = html.unescape(raw).strip()
    if not url.lower().startswith(("http://", "https://")):
        return None
    if CONTROL.search(url):  # cannot go into a signed token; the API refuses such links
        return None
    return tag[: href.start()] + href.group(1), url, tag[href.end() :]


def add_pixel(page: str, url: str) -> str:
    """The open pixel, just before the last </body> (at the end when there is none)."""
    pixel = (
        f'<img src="{html.escape(url)}" width="1" height="1" alt="" '
        'style="display:block;border:0;width:1px;height:1px" />'
    )
    # The last </body> is nearly always in the page's last bytes: look there first, and scan
    # the whole page only when the tail has none. A match starting in the tail is later than
    # any starting before it, so the tail's last match is the page's last.
    ends = list(_BODY_END.finditer(page, max(0, len(page) - _TAIL))) or list(
        _BODY_END.finditer(page)
    )
    if not ends:
        return page + pixel
    at = ends[-1].start()
    return page[:at] + pixel + page[at:]
