"""Who opened or clicked, coarsely: the kind of device (from the user agent) and the country
(from the client address), for the webhook's `analytics` and the API's breakdowns.

Both are decided when the hit arrives, from the request alone, and stored with the event as
`device_type`, `country` and `country_code`. The country is looked up from the full address
in memory; only the coarse network (tracker.classify.ip_prefix) is ever stored.

Cost on the hot path: the parsers are built once per process (`load()`, which the tracker
calls at start, off the event loop); a user agent's device type is cached (an LRU: a burst of
opens comes from a few mail clients and proxies, so few distinct agents, and a parse is
~0.4 ms); a country lookup is a binary search of an in-memory table (~3 us) and is not cached,
since a cache keyed by address would keep full addresses in memory.
"""

from __future__ import annotations

import functools
import re

import ua_parser
from geoip2fast import GeoIP2Fast

DEVICE_TYPES = ("desktop", "mobile", "tablet", "bot", "unknown")

# Machine reasons (tracker.classify) that mean no person's device fetched the pixel or link:
# mail-privacy proxies, scanners, scripts. Not `prefetch` (a real browser, just early) nor
# `no_user_agent` (we cannot tell: unknown).
_MACHINE_DEVICES = frozenset(
    {"apple_mpp", "google_image_proxy", "yahoo_image_proxy", "security_scanner", "bot"}
)
_MOBILE_OS = frozenset(
    {
        "iOS",
        "Android",
        "Windows Phone",
        "Windows Mobile",
        "BlackBerry OS",
        "KaiOS",
        "Symbian OS",
        "Symbian^3",
        "Firefox OS",
        "Tizen",
        "HarmonyOS",
        "webOS",
    }
)
_TABLET_DEVICES = frozenset({"iPad", "Kindle", "Kindle Fire", "BlackBerry Playbook"})
_TABLET_AGENT = re.compile(r"\b(?:Tablet|iPad|Kindle|KF[A-Z]{2,6}|Silk|PlayBook)\b")
_MOBILE_AGENT = re.compile(r"\b(?:Mobile|Mobi|iPhone|iPod|Phone)\b")
# The IPv4+IPv6 table (the package's default file has IPv4 only): mobile carriers hand out
# IPv6 addresses, and phones are a large share of opens.
_GEOIP_FILE = "geoip2fast-ipv6.dat.gz"


@functools.cache
def _parser() -> ua_parser.Parser:
    # No resolver cache of the library's own: _device_of_agent's LRU sits in front of it.
    return ua_parser.Parser(ua_parser.BasicResolver(ua_parser.load_builtins()))


@functools.cache
def _geoip() -> GeoIP2Fast:
    return GeoIP2Fast(verbose=False, geoip2fast_data_file=_GEOIP_FILE)


def load() -> None:
    """Build both parsers now (~0.2 s), rather than in the first request that needs them."""
    _parser()
    _geoip()


@functools.lru_cache(maxsize=4096)
def _device_of_agent(agent: str) -> str:
    result = _parser()(agent, ua_parser.Domain.OS | ua_parser.Domain.DEVICE)
    device = result.device.family if result.device else None
    brand = result.device.brand if result.device else None
    system = result.os.family if result.os else None
    if device == "Spider":  # uap-core's name for crawlers and fetchers
        return "bot"
    if device in _TABLET_DEVICES or brand == "Generic_Android_Tablet":
        return "tablet"
    if system == "BlackBerry Tablet OS" or _TABLET_AGENT.search(agent):
        return "tablet"
    if system == "Android":
        # Android's convention: phones' browsers say "Mobile", tablets' do not.
        return "mobile" if _MOBILE_AGENT.search(agent) else "tablet"
    if system in _MOBILE_OS or device in ("iPhone", "iPod") or _MOBILE_AGENT.search(agent):
        return "mobile"
    if system is not None or device == "Mac":
        return "desktop"  # Windows, macOS, Linux, ChromeOS...: what is left of the real systems
    return "unknown"  # an agent that names no system or device we know


def device_type(user_agent: str, machine_reason: str | None) -> str:
    """desktop, mobile, tablet, bot, or unknown (no user agent, or one that says nothing)."""
    if machine_reason in _MACHINE_DEVICES:
        return "bot"
    agent = user_agent[:512].strip()
    if not agent:
        return "unknown"
    return _device_of_agent(agent)


def country(ip: str | None) -> tuple[str | None, str | None]:
    """(ISO 3166 code, English name) of a public address; (None, None) for loopback, private,
    reserved or unlisted addresses."""
    if not ip:
        return None, None
    if ip.startswith("::ffff:") and "." in ip:  # IPv4-mapped: look up the IPv4 address
        ip = ip[7:]
    found = _geoip().lookup(ip)
    code = found.country_code
    # The table answers "--" with a description ("Private Network Class A") for private and
    # reserved ranges, and for addresses it does not list.
    if found.is_private or len(code) != 2 or not code.isalpha():
        return None, None
    return code, found.country_name
