"""Telling machine hits from human ones, and keeping only coarse data about who hit.

Since Apple Mail Privacy Protection (2021) a large share of "opens" are proxies fetching
every image at delivery, and corporate security gateways follow every link within seconds
to scan it. Counting those as engagement misleads senders, so each hit is classified when it
arrives: what the request itself shows is decided here (user agent, source address, prefetch
headers); what needs the message (how soon after delivery) is decided in the insert
(tracker/queries.sql, `record_hits`) with the thresholds below.

We keep the requester's network prefix (/24 for IPv4, /48 for IPv6), not the full address:
enough for coarse location or spotting a scanner network, not enough to identify a person.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping

# A hit this soon after the message was handed to the receiving server is a machine: no
# human opens mail within two seconds of delivery, and link scanners fetch within ten.
OPEN_MACHINE_WINDOW_SECONDS = 2.0
CLICK_MACHINE_WINDOW_SECONDS = 10.0

# Apple's privacy proxy sends exactly this user agent, nothing more; its egress is 17.0.0.0/8.
_APPLE_MPP_AGENT = "Mozilla/5.0"

# One pattern with a named group per reason: one scan of the user agent instead of four.
_AGENTS = re.compile(
    r"(?P<google_image_proxy>GoogleImageProxy|ggpht\.com)"
    r"|(?P<yahoo_image_proxy>YahooMailProxy)"
    r"|(?P<security_scanner>barracuda|mimecast|proofpoint|urldefense|symantec|messagelabs|"
    r"forcepoint|sophos|trend ?micro|fireeye|zscaler|paloalto|safelinks|cisco|ironport|"
    r"checkpoint|fortinet|fortiguard|avanan|abnormal|agari|microsoft.+(?:preview|scan))"
    r"|(?P<bot>bot\b|bot/|crawler|spider|slurp|headless|phantomjs|preview|linkexpand|"
    r"python-requests|python-urllib|aiohttp|httpx|curl/|wget/|go-http-client|java/|okhttp|"
    r"libwww|httpclient|node-fetch|axios|scrapy|facebookexternalhit)",
    re.IGNORECASE,
)


@functools.lru_cache(maxsize=4096)
def _agent_reason(agent: str) -> str | None:
    """Cached: a burst of opens comes from a few proxies and clients, so few distinct agents."""
    agent = agent.strip()
    if not agent:
        return "no_user_agent"
    if agent == _APPLE_MPP_AGENT:
        return "apple_mpp"
    match = _AGENTS.search(agent)
    return match.lastgroup if match else None


def machine_reason(user_agent: str, ip: str | None, headers: Mapping[str, str]) -> str | None:
    """Why this request is a machine's, judged from the request alone; None if it may be human."""
    reason = _agent_reason(user_agent[:512])
    if reason is not None:
        return reason
    if ip is not None and ip.startswith("17.") and ip.count(".") == 3:
        return "apple_mpp"
    purpose = headers.get("Sec-Purpose", "") or headers.get("Purpose", "")
    if "prefetch" in purpose.lower() or headers.get("X-Moz", "").lower() == "prefetch":
        return "prefetch"
    return None


def client_ip(peer: str | None, forwarded_for: str | None) -> str | None:
    """The requester's address, believing X-Forwarded-For only from a proxy on our side.

    A reverse proxy in front of the tracker connects from loopback or a private network;
    from anywhere else the header is just something the client wrote. Of a chain, only the
    last entry is the one our proxy added; earlier ones are the client's word.
    """
    if peer is None:
        return None
    try:
        peer_address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if forwarded_for and (peer_address.is_loopback or peer_address.is_private):
        try:
            return str(ipaddress.ip_address(forwarded_for.rsplit(",", 1)[-1].strip()))
        except ValueError:
            pass  # not what a proxy writes: fall back to the peer
    return str(peer_address)


def ip_prefix(ip: str | None) -> str | None:
    """The coarse network an address belongs to: /24 for IPv4, /48 for IPv6."""
    if ip is None:
        return None
    parts = ip.split(".")
    if len(parts) == 4 and all(p.isdigit() and len(p) <= 3 for p in parts):  # the common case
        if all(int(p) <= 255 for p in parts):
            return f"{int(parts[0])}.{int(parts[1])}.{int(parts[2])}.0/24"
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    bits = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))
