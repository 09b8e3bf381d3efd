"""Shaping rules: which site and provider a route belongs to, the limits that apply at each
level, and which reaction a receiver's reply fires, with the shipped rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta.outcomes import Reply
from mta.routing import Route
from mta.shaping import Shaper, load_rules, site_key
from penguinmails.config import ConfigError, ThrottleRule

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "shaping.toml"


def mx(*names: str) -> Route:
    return Route(key="mx:" + ",".join(names), hosts=(("192.0.2.1", 25),))


@pytest.fixture(scope="module")
def shaper() -> Shaper:
    return Shaper(load_rules(str(SHIPPED)))


def test_domains_with_the_same_mx_set_share_a_site_and_their_provider(shaper: Shaper) -> None:
    google = ("aspmx.l.google.com", "alt1.aspmx.l.google.com")
    one = shaper.scope("Acme.test", mx(*google))
    other = shaper.scope("globex.test", mx(*reversed(google)))
    assert one.site == other.site == "site:alt1.aspmx.l.google.com,aspmx.l.google.com"
    assert one.provider == other.provider == "google" and one.domain == "acme.test"
    # gmail.com is Google's by name, whatever its MX says.
    assert shaper.scope("gmail.com", mx("mx.elsewhere.test")).provider == "google"
    yahoo = shaper.scope("aol.com", mx("mx-aol.mail.gm0.yahoodns.net"))
    assert yahoo.provider == "yahoo"
    # A suffix matches whole labels only.
    assert shaper.scope("x.test", mx("mail.notgoogle.com")).provider is None
    # A fixed route is its own site and no provider's.
    routed = shaper.scope("dest.test", Route(key="route:127.0.0.1:2525", hosts=()))
    assert routed.site == "route:127.0.0.1:2525" and routed.provider is None
    assert site_key(mx(*(f"mx{i}.{'x' * 40}.test" for i in range(10)))).startswith("site:")
    assert len(site_key(mx(*(f"mx{i}.{'x' * 40}.test" for i in range(10))))) == 37


def test_every_level_s_limits_apply_and_the_tightest_wins(shaper: Shaper) -> None:
    scope = shaper.scope("acme.test", mx("aspmx.l.google.com"))
    domain_rule = ThrottleRule(max_connections=30, messages_per_connection=500)
    limits = shaper.limits(scope, domain_rule)
    assert [lv.key for lv in limits.levels] == [
        "domain:acme.test",
        "site:aspmx.l.google.com",
        "provider:google",
    ]
    assert limits.max_connections == 10  # the site's cap, under Google's 20 and the domain's 30
    assert limits.messages_per_connection == 100
    assert [(lv.key, lv.rate_per_second) for lv in limits.rated] == [("provider:google", 50)]
    tight = shaper.limits(scope, ThrottleRule(max_connections=2, rate_per_second=1))
    assert tight.max_connections == 2 and len(tight.rated) == 2


@pytest.mark.parametrize(
    ("domain", "mx_host", "reply", "fired"),
    [
        (
            "yahoo.com",
            "mta5.am0.yahoodns.net",
            Reply(
                421,
                "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to "
                "unexpected volume or user complaints - 4.16.55.1",
            ),
            "yahoo-deferred",
        ),
        (
            "gmail.com",
            "gmail-smtp-in.l.google.com",
            Reply(
                421,
                "4.7.28 Our system has detected an unusual rate of unsolicited mail "
                "originating from your IP address.",
            ),
            "google-unusual-rate",
        ),
        (
            "gmail.com",
            "gmail-smtp-in.l.google.com",
            Reply(452, "4.2.2 The email account that you tried to reach is over quota."),
            "google-over-quota",
        ),
        (
            "outlook.com",
            "outlook-com.olc.protection.outlook.com",
            Reply(
                550,
                "5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please "
                "contact your Internet service provider ... (S3140)",
            ),
            "microsoft-blocked",
        ),
        (
            "contoso.test",
            "contoso-test.mail.protection.outlook.com",
            Reply(
                451,
                "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited "
                "due to IP reputation.",
            ),
            "microsoft-rate-limited",
        ),
        # The same words from a provider the rule is not for fire nothing.
        ("acme.test", "mx.acme.test", Reply(421, "4.7.0 [TSS04] deferred"), None),
        ("yahoo.com", "mta5.am0.yahoodns.net", Reply(250, "2.0.0 [TSS04] ok"), None),
        ("yahoo.com", "mta5.am0.yahoodns.net", Reply(None, "4.4.2 timeout"), None),
    ],
)
def test_documented_throttling_replies_fire_their_rule(
    shaper: Shaper, domain: str, mx_host: str, reply: Reply, fired: str | None
) -> None:
    rule = shaper.reaction(reply, shaper.scope(domain, mx(mx_host)))
    assert (rule.name if rule else None) == fired


def test_a_bad_rules_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    cases = {
        '[[automation]]\nname = "x"\nprovider = "nobody"\naction = "suspend"\n': "unknown",
        '[[automation]]\nname = "x"\ntext = "("\naction = "suspend"\n': "automation.0.text",
        '[[automation]]\nname = "x"\naction = "explode"\n': "automation.0.action",
        "[site]\nmax_connections = 0\n": "site.max_connections",
        "[site\n": "shaping",
    }
    for text, named in cases.items():
        path = tmp_path / "rules.toml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            load_rules(str(path))
    with pytest.raises(ConfigError, match=r"missing\.toml"):
        load_rules(str(tmp_path / "missing.toml"))
    assert load_rules("").providers == {}
