"""Device type from real user agents (as mail clients, browsers and proxies send them) and
country from real addresses, with the shipped parsers."""

from __future__ import annotations

import pytest

from tracker import audience
from tracker.classify import machine_reason

AGENTS = [
    # phones: Apple Mail and Safari on iOS, Chrome and the Gmail app's webview on Android,
    # Windows Phone, BlackBerry
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Mobile/15E148",
        "mobile",
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML,"
        " like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
        "mobile",
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/124.0.6367.82 Mobile Safari/537.36",
        "mobile",
    ),
    (
        "Mozilla/5.0 (Linux; Android 12; SM-A525F Build/SP1A.210812.016; wv) AppleWebKit/537.36"
        " (KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.144 Mobile Safari/537.36",
        "mobile",
    ),
    (
        "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0",
        "mobile",
    ),
    (
        "Mozilla/5.0 (Windows Phone 10.0; Android 6.0.1; Microsoft; Lumia 950) AppleWebKit/537.36"
        " (KHTML, like Gecko) Chrome/52.0.2743.116 Mobile Safari/537.36 Edge/15.15063",
        "mobile",
    ),
    (
        "Mozilla/5.0 (BB10; Touch) AppleWebKit/537.10+ (KHTML, like Gecko) Version/10.0.9.2372"
        " Mobile Safari/537.10+",
        "mobile",
    ),
    # tablets: iPad, Android tablets (no "Mobile"), a Kindle Fire, Firefox on a tablet
    (
        "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
        " Version/16.6 Mobile/15E148 Safari/604.1",
        "tablet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/124.0.0.0 Safari/537.36",
        "tablet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 4.4.2; Nexus 7 Build/KOT49H) AppleWebKit/537.36 (KHTML,"
        " like Gecko) Chrome/34.0.1847.114 Safari/537.36",
        "tablet",
    ),
    (
        "Mozilla/5.0 (Linux; Android 11; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Silk/124.3.2 like Chrome/124.0.6367.219 Safari/537.36",
        "tablet",
    ),
    ("Mozilla/5.0 (Android 14; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0", "tablet"),
    # desktops: Outlook, Thunderbird, Apple Mail on macOS, browsers on Windows, Linux, ChromeOS
    ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)", "desktop"),
    (
        "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C;"
        " .NET4.0E; Microsoft Outlook 16.0.17328; ms-office; MSOffice 16)",
        "desktop",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.10.1",
        "desktop",
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
        "desktop",
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/124.0.0.0 Safari/537.36",
        "desktop",
    ),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0", "desktop"),
    (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko)"
        " Chrome/124.0.0.0 Safari/537.36",
        "desktop",
    ),
    # machines: the mail-privacy proxies (Google's, Apple's, Yahoo's), crawlers, scripts,
    # headless browsers, a security scanner
    (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
        "bot",
    ),
    ("Mozilla/5.0", "bot"),
    ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", "bot"),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "bot"),
    ("curl/8.5.0", "bot"),
    (
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
        " HeadlessChrome/124.0.0.0 Safari/537.36",
        "bot",
    ),
    ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "bot"),
    # no agent at all, or one that names nothing we know
    ("", "unknown"),
    ("   ", "unknown"),
    ("SomeNewsletterChecker", "unknown"),
]


@pytest.mark.parametrize(("agent", "expected"), AGENTS)
def test_device_type_of_real_user_agents(agent, expected):
    reason = machine_reason(agent, "198.51.100.1", {})
    assert audience.device_type(agent, reason) == expected


def test_machine_reasons_decide_bot_but_prefetch_keeps_the_device():
    iphone = AGENTS[0][0]
    assert audience.device_type(iphone, "apple_mpp") == "bot"  # Apple's proxy range
    assert audience.device_type(iphone, "security_scanner") == "bot"
    assert audience.device_type(iphone, "prefetch") == "mobile"  # a real phone, early
    assert audience.device_type("", "no_user_agent") == "unknown"


def test_every_answer_is_one_of_the_documented_types():
    assert {expected for _, expected in AGENTS} == set(audience.DEVICE_TYPES)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("8.8.8.8", ("US", "United States")),
        ("81.2.69.160", ("GB", "United Kingdom")),
        ("2a00:1450:4001:800::200e", ("DE", "Germany")),  # IPv6
        ("::ffff:81.2.69.160", ("GB", "United Kingdom")),  # IPv4-mapped, as dual stacks say
        ("1.1.1.1", ("AU", "Australia")),
        # no country: loopback, private, shared, link-local, documentation ranges, junk
        ("127.0.0.1", (None, None)),
        ("::1", (None, None)),
        ("10.1.2.3", (None, None)),
        ("192.168.1.20", (None, None)),
        ("172.16.5.4", (None, None)),
        ("100.64.0.1", (None, None)),
        ("fe80::1", (None, None)),
        ("fd00::1", (None, None)),
        ("203.0.113.7", (None, None)),
        ("2001:db8::1", (None, None)),
        ("not an address", (None, None)),
        (None, (None, None)),
    ],
)
def test_country_of_an_address(ip, expected):
    assert audience.country(ip) == expected
