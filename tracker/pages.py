"""What the tracker sends back: the pixel, the unsubscribe pages, and their headers.

Kept inline rather than as package files, so nothing extra has to be shipped with the wheel.
Pages are static (no recipient data on them) and locked down with a strict CSP, since they
are served to whoever holds a link.
"""

from __future__ import annotations

import base64

# The classic 43-byte transparent 1x1 GIF89a.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")

# Every mail client, proxy and browser cache must come back for each view, or later opens
# are never seen; `private` and `no-store` keep shared caches from serving one to another.
NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
}

PAGE_HEADERS = {
    **NO_CACHE,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_STYLE = (
    "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f6f7f9;"
    "color:#1d2330;margin:0;padding:12vh 1rem}main{max-width:28rem;margin:auto;background:#fff;"
    "border-radius:12px;padding:2rem;box-shadow:0 1px 4px rgba(0,0,0,.08);text-align:center}"
    "h1{font-size:1.3rem;margin:0 0 .75rem}p{line-height:1.5;color:#4a5263}"
    "button{font:inherit;font-weight:600;padding:.7rem 1.6rem;border:0;border-radius:8px;"
    "background:#1d2330;color:#fff;cursor:pointer;margin-top:.5rem}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex,nofollow">'
        f"<title>{title}</title><style>{_STYLE}</style></head>"
        f"<body><main>{body}</main></body></html>"
    )


# Fetching this page changes nothing: scanners and link previewers fetch every URL in a
# message. Only the button's POST (to the same URL, carrying the same signed token) does.
CONFIRM = _page(
    "Unsubscribe",
    "<h1>Unsubscribe?</h1><p>You will no longer receive emails from this sender at this "
    "address.</p>"
    '<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
    '<button type="submit">Unsubscribe</button></form>',
)

DONE = _page(
    "Unsubscribed",
    "<h1>You are unsubscribed</h1><p>This address will not receive further emails from this "
    "sender. It can take a moment for emails already on their way to stop.</p>",
)

GONE = _page(
    "Link expired",
    "<h1>This link has expired</h1><p>The message it came from no longer exists. "
    "Reply to the sender to be removed from their list.</p>",
)

UNAVAILABLE = _page(
    "Try again",
    "<h1>Please try again</h1><p>We could not process your request just now. "
    "Nothing was changed; please try again in a minute.</p>",
)

NOT_FOUND = "Not found\n"
