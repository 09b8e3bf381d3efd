"""A draft is checked before it is queued: every recipient has a value for every variable, the
templates parse, and nothing personalised can inject a header."""

from __future__ import annotations

import pytest

from penguinmails.messages import Draft, InvalidMessage


def draft(**fields) -> Draft:
    base: dict = {
        "from_email": "news@acme.test",
        "subject": "Hi {{name}}",
        "recipients": ["a@dest.test", "b@dest.test"],
        "text": "Hello {{name}} from {{company | default: 'us'}}",
    }
    base.update(fields)
    return Draft(**base)


def test_enqueue_refuses_a_recipient_without_a_value():
    with pytest.raises(InvalidMessage) as caught:
        draft(personalization=[{"name": "Ann"}, {"company": "Acme"}]).validate()
    assert caught.value.field == "personalization[1]"
    assert "name" in caught.value.message
    with pytest.raises(InvalidMessage):
        draft().validate()  # no personalization at all
    draft(personalization=[{"name": "Ann"}, {"name": "Bob"}]).validate()


def test_enqueue_accepts_builtins_and_defaults():
    draft(
        subject="News",
        text="{{ email }} can leave: {{unsubscribe_url}} {{x | default: ''}}",
    ).validate()


def test_enqueue_reports_template_syntax_errors_by_field():
    with pytest.raises(InvalidMessage) as caught:
        draft(html="<p>{{name</p>", personalization=[{"name": "a"}, {"name": "b"}]).validate()
    assert caught.value.field == "html"


def test_a_personalised_subject_cannot_inject_headers():
    with pytest.raises(InvalidMessage, match="CR or LF"):
        draft(personalization=[{"name": "Ann\r\nBcc: x@evil.test"}, {"name": "Bob"}]).validate()
    # Only values the subject uses matter; the body may hold line breaks.
    draft(
        subject="Hi",
        text="{{bio}}",
        personalization=[{"bio": "a\nb"}, {"bio": "c"}],
    ).validate()
