"""Machine-hit classification and the coarse network kept about requesters."""

from __future__ import annotations

import pytest

from tracker.classify import client_ip, ip_prefix, machine_reason

CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"


@pytest.mark.parametrize(
    ("agent", "ip", "headers", "expected"),
    [
        ("Mozilla/5.0", "203.0.113.9", {}, "apple_mpp"),
        (CHROME, "17.58.10.1", {}, "apple_mpp"),
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com "
            "GoogleImageProxy)",
            "66.249.1.1",
            {},
            "google_image_proxy",
        ),
        (
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
            None,
            {},
            "yahoo_image_proxy",
        ),
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", None, {}, "security_scanner"),
        ("curl/8.4.0", None, {}, "bot"),
        ("python-requests/2.31", None, {}, "bot"),
        ("Mozilla/5.0 (compatible; bingbot/2.0)", None, {}, "bot"),
        ("Mozilla/5.0 HeadlessChrome/120.0", None, {}, "bot"),
        ("", "198.51.100.1", {}, "no_user_agent"),
        (CHROME, "198.51.100.1", {"Sec-Purpose": "prefetch"}, "prefetch"),
        (CHROME, "198.51.100.1", {}, None),
        (OUTLOOK, "198.51.100.1", {}, None),  # Outlook desktop showing images is a human
    ],
)
def test_machine_reasons(agent, ip, headers, expected):
    assert machine_reason(agent, ip, headers) == expected


def test_forwarded_for_is_believed_only_from_our_own_proxy():
    assert client_ip("127.0.0.1", "198.51.100.7") == "198.51.100.7"
    assert client_ip("10.0.0.2", "1.2.3.4, 198.51.100.7") == "198.51.100.7"
    assert client_ip("10.0.0.2", "198.51.100.7, junk") == "10.0.0.2"
    assert client_ip("8.8.4.4", "198.51.100.7") == "8.8.4.4"  # from the internet: ignored
    assert client_ip(None, "198.51.100.7") is None


def test_only_the_network_is_kept():
    assert ip_prefix("198.51.100.77") == "198.51.100.0/24"
    assert ip_prefix("2001:db8:1234:5678::1") == "2001:db8:1234::/48"
    assert ip_prefix("::ffff:198.51.100.77") == "198.51.100.0/24"
    assert ip_prefix("not an ip") is None
    assert ip_prefix(None) is None
