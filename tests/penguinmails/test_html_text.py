"""The html-to-text scans: the same answers as the regular expressions they replace, in one
pass however many openers lack their closer."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from penguinmails.html_text import _drop, _tags, html_to_text

# What the scans replaced: correct, but each opener without a closer rescans the rest.
REGEX_DROP = re.compile(r"<(head|style|script|title)\b.*?</\1\s*>|<!--.*?-->", re.I | re.DOTALL)
REGEX_TAG = re.compile(r"<[^>]*>")

_PIECES = st.sampled_from(
    [
        "<",
        ">",
        "<!--",
        "-->",
        "<!-->",
        "<head>",
        "</head>",
        "<HEAD ",
        "<header>",
        "<style>",
        "</style >",
        "</STYLE>",
        "</style",
        "<script>",
        "</script>",
        "<title>",
        "</title\n>",
        "<p>",
        "</p>",
        "<a href='https://x.test/'>",
        "</a>",
        "<br>",
        "x",
        " ",
        "\n",
        "&amp;",
    ]
)


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_the_scans_answer_as_the_regular_expressions_did(page: str) -> None:
    assert _drop(page) == REGEX_DROP.sub("", page)
    assert list(_tags(page)) == [m.span() for m in REGEX_TAG.finditer(page)]


def test_pages_of_openers_without_closers_are_plain_text() -> None:
    # Each of these took the regular expressions minutes; the scans make one pass.
    for page in ("<" * 300_000, "<!--" * 100_000, "<style" * 100_000, "<head " * 100_000):
        assert html_to_text(page) == " ".join(page.split()) + "\n"


def test_dropped_elements_and_tags() -> None:
    page = (
        "<html><head><title>T</title><style>p { x: y }</style></head><body>"
        "<!-- note --><script>alert(1)</script><p>Hello<br>there</p>"
        '<a href="https://x.test/a">link</a></body></html>'
    )
    assert html_to_text(page) == "Hello\nthere\n\nlink (https://x.test/a)\n"
