"""Deliverability checks for a sending domain: what its DNS says, against what we send.

Since 2024 Gmail and Yahoo (and since May 2025 Microsoft's consumer mail) junk or refuse bulk
mail without SPF, DKIM and DMARC alignment and matching forward and reverse DNS. This module
is the one place that looks: `penguinmails domains verify DOMAIN` and
`GET /api/v1/domains/{domain}` both call `verify`, which gives one `Check` per thing looked at,
each pass / fail / warn with the record found, the record expected and how to fix it:

- `dkim:<selector>`: the TXT record at `<selector>._domainkey.<domain>` carries the public
  key we sign with (the newest key of each algorithm; an older selector still stored is a
  warning only, its mail may still be in flight);
- `spf`: the return-path domain (what SPF authenticates) has one SPF record, within the
  limit of 10 DNS lookups, evaluated by walking include/redirect/a/mx, that passes every
  egress address (`[mta.sources]`, else the addresses of `[mta] hostname`);
- `dmarc`: `_dmarc.<domain>` (or a parent's) has a valid policy and our mail aligns with it:
  DKIM always (we sign as the From domain); SPF only when the return path is under it;
- `return_path`: `bounces.<domain>` is a CNAME to `[mta] bounce_domain`, or its MX names the
  same hosts as the bounce domain's MX (our inbound);
- `ptr:<source>`: each sending source's address has a PTR naming its EHLO name, and that
  name resolves back to the address (forward-confirmed reverse DNS);
- `tracking`: `links.<domain>` resolves to the tracker (`[tracker] base_url`'s host) and
  serves TLS with a certificate valid for its name;
- `unsubscribe` and `complaints`: what we do regardless of DNS, said so that the report is
  the whole picture.

Only DKIM and DMARC gate sending (`Report.sending_allowed`): without them receivers refuse
the mail outright; the others lower its standing. `[mta] require_verified_domains` turns the
gate on (api.senders); `Reverifier` re-checks stored domains on a schedule in the API process
and records `domain.verification_failed` when a domain that passed stops passing.

Lookups go through dnspython's async resolver on `[mta] dns_servers` (the MTA's own), so tests
point it at tests/dns_server.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg
import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver
import dns.reversename

from penguinmails.config import Settings, split_hostport
from penguinmails.database import DATABASE_ERRORS
from penguinmails.queries import load

log = logging.getLogger(__name__)
SQL = load("penguinmails", "sql/deliverability.sql")

Status = Literal["pass", "fail", "warn"]
PASS: Status = "pass"
FAIL: Status = "fail"
WARN: Status = "warn"
GATING = ("dkim", "dmarc")  # the checks whose failure refuses live sending
SPF_LOOKUP_LIMIT = 10  # RFC 7208 section 4.6.4
RECHECK_SECONDS = 6 * 3600.0  # how old a stored result may get before the scheduler redoes it
TICK_SECONDS = 60.0
TLS_TIMEOUT = 10.0

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Check:
    name: str  # "dkim:pm202611", "spf", "dmarc", "return_path", "ptr:default", "tracking"...
    subject: str  # the DNS name (or address) looked at
    status: Status
    found: str
    expected: str
    fix: str = ""  # what to do; empty when it passes

    @property
    def kind(self) -> str:
        return self.name.partition(":")[0]


@dataclass(frozen=True)
class Report:
    domain: str
    return_path: str
    tracking: str
    checks: list[Check]

    @property
    def status(self) -> Status:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else PASS

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def passed(self, name: str) -> bool:
        """Whether the check called `name` ran and passed."""
        return any(c.name == name and c.status == PASS for c in self.checks)

    @property
    def sending_allowed(self) -> bool:
        """DKIM and DMARC pass: what live sending from the domain requires."""
        return not any(c.kind in GATING for c in self.failed)

    def as_json(self) -> list[dict[str, str]]:
        return [asdict(c) for c in self.checks]


@dataclass(frozen=True)
class DkimKey:
    selector: str
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    public_key: str
    signing: bool  # the newest of its algorithm: what mail is signed with now


def return_path_domain(domain: str) -> str:
    return f"bounces.{domain}"


def tracking_domain(domain: str) -> str:
    return f"links.{domain}"


def make_resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    """The MTA's resolver: `[mta] dns_servers`, else /etc/resolv.conf."""
    resolver = dns.asyncresolver.Resolver(configure=not settings.mta.dns_servers)
    if settings.mta.dns_servers:
        resolver.nameservers = [
            dns.nameserver.Do53Nameserver(*split_hostport(s)) for s in settings.mta.dns_servers
        ]
    resolver.lifetime = settings.mta.dns_timeout
    return resolver


class LookupError_(Exception):
    """A lookup that failed (timeout, SERVFAIL): neither a record nor its absence."""


class _Dns:
    def __init__(self, resolver: dns.asyncresolver.Resolver) -> None:
        self._resolver = resolver

    async def records(self, name: str, rdtype: str) -> list[Any]:
        """The answer's records; [] for NXDOMAIN or no data; LookupError_ otherwise."""
        try:
            answer = await self._resolver.resolve(name, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.DNSException, ValueError) as exc:
            raise LookupError_(f"{rdtype} {name}: {exc}") from exc
        return list(answer)

    async def txt(self, name: str) -> list[str]:
        return [
            b"".join(r.strings).decode("utf-8", "replace") for r in await self.records(name, "TXT")
        ]

    async def addresses(self, name: str) -> set[str]:
        found: set[str] = set()
        for rdtype in ("A", "AAAA"):
            found |= {r.to_text() for r in await self.records(name, rdtype)}
        return found

    async def cname(self, name: str) -> str | None:
        records = await self.records(name, "CNAME")
        return _host(records[0].target.to_text()) if records else None

    async def mx(self, name: str) -> set[str]:
        return {_host(r.exchange.to_text()) for r in await self.records(name, "MX")}


def _host(name: str) -> str:
    return name.lower().rstrip(".")


# -- DKIM -----------------------------------------------------------------------------------


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for part in record.split(";"):
        key, eq, value = part.partition("=")
        if eq:
            tags[key.strip().lower()] = re.sub(r"\s+", "", value)
    return tags


async def check_dkim(lookup: _Dns, domain: str, key: DkimKey) -> Check:
    name = f"{key.selector}._domainkey.{domain}"
    k = "rsa" if key.algorithm == "rsa-sha256" else "ed25519"
    expected = f"v=DKIM1; k={k}; p={key.public_key}"
    fix = (
        f"publish TXT {name} = {expected!r} "
        f"(`penguinmails domains show {domain}` prints it in zone-file form)"
    )
    missing = FAIL if key.signing else WARN
    try:
        found = await lookup.txt(name)
    except LookupError_ as exc:
        return Check(f"dkim:{key.selector}", name, FAIL, f"lookup failed: {exc}", expected, fix)
    records = [r for r in found if "p=" in r]
    if not records:
        return Check(f"dkim:{key.selector}", name, missing, "no DKIM record", expected, fix)
    if len(records) > 1:
        return Check(
            f"dkim:{key.selector}",
            name,
            missing,
            " | ".join(records),
            expected,
            "keep one TXT record at this name: receivers fail a selector with several",
        )
    tags = _tags(records[0])
    if tags.get("p") != key.public_key or tags.get("k", "rsa") != k:
        return Check(
            f"dkim:{key.selector}",
            name,
            missing,
            records[0],
            expected,
            f"the published key is not the one we sign with; {fix}",
        )
    return Check(f"dkim:{key.selector}", name, PASS, records[0], expected)


# -- SPF ------------------------------------------------------------------------------------


@dataclass
class _Term:
    qualifier: str  # + - ~ ?
    kind: str  # "nets", "all", "include", "unevaluated"
    nets: list[IPNetwork] = field(default_factory=list)
    sub: _Spf | None = None
    text: str = ""


@dataclass
class _Spf:
    domain: str
    record: str | None = None
    terms: list[_Term] = field(default_factory=list)
    redirect: _Spf | None = None
    error: str = ""  # a permanent error in this record or below


class _SpfWalk:
    """Builds the record tree once (every include and redirect followed), counting the
    lookups RFC 7208 counts, then evaluates it for each egress address."""

    def __init__(self, lookup: _Dns) -> None:
        self.lookup = lookup
        self.lookups = 0
        self.unevaluated: list[str] = []

    def _count(self) -> bool:
        self.lookups += 1
        return self.lookups <= SPF_LOOKUP_LIMIT

    async def build(self, domain: str) -> _Spf:
        node = _Spf(domain)
        records = [r for r in await self.lookup.txt(domain) if r.lower().startswith("v=spf1")]
        records = [r for r in records if r.lower() == "v=spf1" or r[6:7].isspace()]
        if not records:
            node.error = f"no SPF record at {domain}"
            return node
        if len(records) > 1:
            node.error = (
                f"{len(records)} SPF records at {domain} (receivers treat this as an error)"
            )
            node.record = " | ".join(records)
            return node
        node.record = records[0]
        redirect: str | None = None
        for raw in records[0].split()[1:]:
            qualifier = raw[0] if raw[0] in "+-~?" else "+"
            term = raw[1:] if raw[0] in "+-~?" else raw
            name, _, arg = term.partition(":")
            name = name.lower()
            if "=" in name and not _:
                modifier, _eq, value = term.partition("=")
                if modifier.lower() == "redirect":
                    redirect = value
                continue  # exp= and unknown modifiers change no result
            if "%{" in term:
                self.unevaluated.append(term)
                node.terms.append(_Term(qualifier, "unevaluated", text=term))
                continue
            base, _slash, cidr = (arg or "").partition("/")
            if name in ("ip4", "ip6"):
                try:
                    node.terms.append(
                        _Term(qualifier, "nets", [ipaddress.ip_network(arg, strict=False)])
                    )
                except ValueError:
                    node.error = f"{domain}: bad {name} value {arg!r}"
                    return node
            elif name in ("a", "mx") or name.startswith(("a/", "mx/")):
                kind, _s, bare_cidr = name.partition("/")
                if not self._count():
                    node.error = f"more than {SPF_LOOKUP_LIMIT} DNS lookups"
                    return node
                target = base or domain
                hosts = [target] if kind == "a" else sorted(await self.lookup.mx(target))[:10]
                nets: list[IPNetwork] = []
                for host in hosts:
                    for address in await self.lookup.addresses(host):
                        suffix = cidr or bare_cidr
                        prefix = f"/{suffix}" if suffix and ":" not in address else ""
                        nets.append(ipaddress.ip_network(address + prefix, strict=False))
                node.terms.append(_Term(qualifier, "nets", nets, text=term))
            elif name == "include":
                if not self._count():
                    node.error = f"more than {SPF_LOOKUP_LIMIT} DNS lookups"
                    return node
                sub = await self.build(arg)
                if sub.error:
                    node.error = sub.error
                    return node
                node.terms.append(_Term(qualifier, "include", sub=sub, text=term))
            elif name in ("exists", "ptr"):
                if not self._count():
                    node.error = f"more than {SPF_LOOKUP_LIMIT} DNS lookups"
                    return node
                self.unevaluated.append(term)
                node.terms.append(_Term(qualifier, "unevaluated", text=term))
            elif name == "all":
                node.terms.append(_Term(qualifier, "all"))
            else:
                node.error = f"{domain}: unknown SPF mechanism {raw!r}"
                return node
        if redirect is not None and not any(t.kind == "all" for t in node.terms):
            if not self._count():
                node.error = f"more than {SPF_LOOKUP_LIMIT} DNS lookups"
                return node
            node.redirect = await self.build(redirect)
            node.error = node.redirect.error
        return node


_RESULT = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


def _evaluate(node: _Spf, ip: IPAddress) -> str:
    for term in node.terms:
        if term.kind == "all":
            return _RESULT[term.qualifier]
        if term.kind == "nets" and any(ip in net for net in term.nets if net.version == ip.version):
            return _RESULT[term.qualifier]
        if term.kind == "include" and term.sub is not None and _evaluate(term.sub, ip) == "pass":
            return _RESULT[term.qualifier]
    if node.redirect is not None:
        return _evaluate(node.redirect, ip)
    return "neutral"


async def egress_addresses(lookup: _Dns, settings: Settings) -> list[str]:
    """The addresses mail leaves from: each source's, else its EHLO name's addresses."""
    found: set[str] = set()
    sources = settings.mta.sources
    for source in sources.values():
        if source.address:
            found.add(source.address)
    if not found:
        names = {s.ehlo or settings.mta.hostname for s in sources.values()} or {
            settings.mta.hostname
        }
        for name in names:
            with contextlib.suppress(LookupError_):
                found |= await lookup.addresses(name)
    return sorted(found)


async def check_spf(lookup: _Dns, name: str, egress: Sequence[str]) -> Check:
    listed = " ".join(f"ip{ipaddress.ip_address(a).version}:{a}" for a in egress)
    expected = f"v=spf1 {listed or 'ip4:<your egress address>'} -all (or ~all)"
    walk = _SpfWalk(lookup)
    try:
        tree = await walk.build(name)
    except LookupError_ as exc:
        return Check("spf", name, FAIL, f"lookup failed: {exc}", expected, "retry; check the DNS")
    found = tree.record or "no SPF record"
    if tree.error:
        return Check(
            "spf",
            name,
            FAIL,
            found,
            expected,
            f"{tree.error}: publish one TXT record at {name}, within {SPF_LOOKUP_LIMIT} lookups"
            " (flatten includes into ip4:/ip6: terms if needed)",
        )
    if not egress:
        return Check(
            "spf",
            name,
            WARN,
            f"{found} ({walk.lookups} lookups)",
            expected,
            "set [mta.sources.NAME] address (or make [mta] hostname resolve) so the egress "
            "addresses are known and can be checked",
        )
    results = {a: _evaluate(tree, ipaddress.ip_address(a)) for a in egress}
    missing = {a: r for a, r in results.items() if r != "pass"}
    if missing:
        status = WARN if walk.unevaluated else FAIL
        what = ", ".join(f"{a} gets {r}" for a, r in missing.items())
        hint = f"; terms not checked here: {' '.join(walk.unevaluated)}" if walk.unevaluated else ""
        return Check(
            "spf",
            name,
            status,
            f"{found} ({walk.lookups} lookups)",
            expected,
            f"{what}: add {' '.join(f'ip{ipaddress.ip_address(a).version}:{a}' for a in missing)}"
            f" to the SPF record at {name}{hint}",
        )
    return Check("spf", name, PASS, f"{found} ({walk.lookups} lookups)", expected)


# -- DMARC ----------------------------------------------------------------------------------


async def check_dmarc(lookup: _Dns, domain: str, return_path: str) -> Check:
    expected = f"v=DMARC1; p=none (or quarantine/reject); rua=mailto:dmarc@{domain}"
    fix = f"publish TXT _dmarc.{domain} = {expected!r}"
    labels = domain.split(".")
    try:
        for i in range(len(labels) - 1):  # the domain, then each parent: the org's policy
            at = ".".join(labels[i:])
            records = [r for r in await lookup.txt(f"_dmarc.{at}") if r.startswith("v=DMARC1")]
            if records:
                break
        else:
            return Check("dmarc", f"_dmarc.{domain}", FAIL, "no DMARC record", expected, fix)
    except LookupError_ as exc:
        return Check("dmarc", f"_dmarc.{domain}", FAIL, f"lookup failed: {exc}", expected, fix)
    subject = f"_dmarc.{at}"
    if len(records) > 1:
        return Check("dmarc", subject, FAIL, " | ".join(records), expected, f"keep one; {fix}")
    tags = _tags(records[0])
    policy = tags.get("sp", tags.get("p")) if at != domain else tags.get("p")
    if policy not in ("none", "quarantine", "reject"):
        return Check("dmarc", subject, FAIL, records[0], expected, f"p= is missing; {fix}")
    # DKIM: we sign with d=<From domain>, aligned under strict and relaxed alike. SPF: the
    # return path's domain must be the From domain (strict) or under the same one (relaxed).
    strict = tags.get("aspf", "r") == "s"
    spf_aligned = return_path == domain or (
        not strict and (return_path.endswith("." + at) or return_path == at)
    )
    if not spf_aligned:
        why = (
            "aspf=s asks for the exact From domain"
            if strict
            else f"the return path {return_path} is not under {at}"
        )
        return Check(
            "dmarc",
            subject,
            WARN,
            records[0],
            expected,
            f"DKIM aligns, SPF does not ({why}): publish the return path "
            f"{return_path_domain(domain)} so both align",
        )
    return Check("dmarc", subject, PASS, records[0], expected)


# -- return path ----------------------------------------------------------------------------


async def check_return_path(lookup: _Dns, settings: Settings, name: str) -> Check:
    bounce = settings.mta.bounce_domain
    try:
        ours = await lookup.mx(bounce) or {settings.mta.hostname}
        expected = f"{name}. CNAME {bounce}.  (or MX 10 {sorted(ours)[0]}.)"
        target = await lookup.cname(name)
        if target is not None:
            if target in settings.inbound_domains():
                return Check("return_path", name, PASS, f"CNAME {target}", expected)
            found = f"CNAME {target}"
        else:
            hosts = await lookup.mx(name)
            if hosts and hosts <= ours:
                return Check("return_path", name, PASS, f"MX {' '.join(sorted(hosts))}", expected)
            found = f"MX {' '.join(sorted(hosts))}" if hosts else "no CNAME or MX"
    except LookupError_ as exc:
        return Check(
            "return_path", name, FAIL, f"lookup failed: {exc}", bounce, "retry; check the DNS"
        )
    return Check(
        "return_path",
        name,
        FAIL,
        found,
        expected,
        f"publish {expected}: bounces and complaints come back to our inbound there, and SPF "
        "is then checked on a domain under yours, so it aligns for DMARC",
    )


# -- sources --------------------------------------------------------------------------------


async def check_source(lookup: _Dns, name: str, address: str, ehlo: str) -> Check:
    ehlo = _host(ehlo)
    expected = f"PTR {ehlo}, and {ehlo} A/AAAA {address or '<address>'}"
    if not address:
        return Check(
            f"ptr:{name}",
            ehlo,
            WARN,
            "the system chooses the address",
            expected,
            f"set [mta.sources.{name}] address so its reverse DNS can be checked",
        )
    try:
        reverse = dns.reversename.from_address(address).to_text()
        names = {_host(r.target.to_text()) for r in await lookup.records(reverse, "PTR")}
        if ehlo not in names:
            return Check(
                f"ptr:{name}",
                address,
                FAIL,
                f"PTR {', '.join(sorted(names)) or 'none'}",
                expected,
                f"ask the address's owner (your host or ISP) to set its PTR to {ehlo}, or set "
                f"[mta.sources.{name}] ehlo to the name the PTR gives",
            )
        forward = await lookup.addresses(ehlo)
    except LookupError_ as exc:
        return Check(f"ptr:{name}", address, FAIL, f"lookup failed: {exc}", expected, "retry")
    if address not in forward:
        return Check(
            f"ptr:{name}",
            address,
            FAIL,
            f"PTR {ehlo}; {ehlo} resolves to {', '.join(sorted(forward)) or 'nothing'}",
            expected,
            f"publish {ehlo}. A {address} (forward and reverse DNS must agree)",
        )
    return Check(f"ptr:{name}", address, PASS, f"PTR {ehlo}; {ehlo} A {address}", expected)


# -- tracking -------------------------------------------------------------------------------


async def check_tracking(lookup: _Dns, settings: Settings, name: str) -> list[Check]:
    base = urlsplit(settings.tracker.base_url)
    tracker = _host(base.hostname or "")
    expected = f"{name}. CNAME {tracker}."
    try:
        try:
            ipaddress.ip_address(tracker)
            theirs = {tracker}
        except ValueError:
            theirs = await lookup.addresses(tracker)
        target = await lookup.cname(name)
        addresses = await lookup.addresses(target or name)
    except LookupError_ as exc:
        return [
            Check("tracking", name, FAIL, f"lookup failed: {exc}", expected, "retry; check DNS")
        ]
    found = f"CNAME {target}" if target else f"A {' '.join(sorted(addresses)) or 'none'}"
    if target != tracker and not (addresses and addresses <= theirs):
        return [
            Check(
                "tracking",
                name,
                FAIL,
                found,
                expected,
                f"publish {expected} (or A records of the tracker's addresses): links and the "
                "open pixel of this domain's mail use this name",
            )
        ]
    checks = [Check("tracking", name, PASS, found, expected)]
    checks.append(await _check_tls(settings, name, sorted(addresses)))
    return checks


async def _check_tls(settings: Settings, name: str, addresses: Sequence[str]) -> Check:
    port = settings.tracker.https_port
    expected = f"a certificate for {name} on port {port}"
    context = ssl.create_default_context()
    if settings.mta.tls_ca_file:
        context.load_verify_locations(settings.mta.tls_ca_file)
    if not addresses:
        return Check("tracking_tls", name, FAIL, "no address", expected, "publish the name first")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(addresses[0], port, ssl=context, server_hostname=name),
            TLS_TIMEOUT,
        )
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return Check(
            "tracking_tls",
            f"{name}:{port}",
            FAIL,
            f"TLS failed: {exc}",
            expected,
            f"serve https://{name} with a certificate for that name (the reverse proxy in "
            "front of the tracker; docs/deliverability.md)",
        )
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return Check("tracking_tls", f"{name}:{port}", PASS, "a valid certificate", expected)


# -- the report -----------------------------------------------------------------------------

POLICY = [
    Check(
        "unsubscribe",
        "List-Unsubscribe",
        PASS,
        "every message carries one-click List-Unsubscribe (RFC 8058) and a mailto: link",
        "unsubscribes honoured at once",
        "",
    ),
    Check(
        "complaints",
        "feedback loops",
        PASS,
        "complaint reports (ARF) to the return path suppress the address at once",
        "complaints suppress",
        "",
    ),
]


async def verify(
    settings: Settings,
    domain: str,
    keys: Sequence[DkimKey],
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
    return_path: str | None = None,
    tracking: str | None = None,
) -> Report:
    """Every check for `domain`; `keys` are its stored DKIM keys."""
    lookup = _Dns(resolver or make_resolver(settings))
    return_path = return_path or return_path_domain(domain)
    tracking = tracking or tracking_domain(domain)
    egress = await egress_addresses(lookup, settings)
    checks = [await check_dkim(lookup, domain, key) for key in keys]
    if not keys:
        checks.append(
            Check(
                "dkim",
                domain,
                FAIL,
                "no key stored",
                "a DKIM key",
                f"penguinmails domains add {domain} --tenant NAME",
            )
        )
    return_path_check = await check_return_path(lookup, settings, return_path)
    # SPF is checked where receivers check it: the return path mail will carry.
    envelope = return_path if return_path_check.status == PASS else settings.mta.bounce_domain
    checks.append(await check_spf(lookup, envelope, egress))
    checks.append(await check_dmarc(lookup, domain, envelope))
    checks.append(return_path_check)
    sources = settings.mta.sources or {}
    if sources:
        for name, source in sorted(sources.items()):
            checks.append(
                await check_source(
                    lookup, name, source.address, source.ehlo or settings.mta.hostname
                )
            )
    else:
        checks.append(await check_source(lookup, "default", "", settings.mta.hostname))
    checks += await check_tracking(lookup, settings, tracking)
    checks += POLICY
    return Report(domain, return_path, tracking, checks)


# -- stored results -------------------------------------------------------------------------


async def stored_keys(conn: asyncpg.Connection | asyncpg.Pool, domain: str) -> list[DkimKey]:
    rows = await conn.fetch(SQL["domain_keys"], domain)
    seen: set[str] = set()
    keys = []
    for row in rows:  # newest first: the first of each algorithm signs
        keys.append(
            DkimKey(
                row["selector"],
                row["algorithm"],
                row["public_key"],
                row["algorithm"] not in seen,
            )
        )
        seen.add(row["algorithm"])
    return keys


async def verify_and_store(
    pool: asyncpg.Pool | asyncpg.Connection,
    settings: Settings,
    domain: str,
    *,
    resolver: dns.asyncresolver.Resolver | None = None,
) -> Report:
    """Check `domain` (a sending domain), store the result, and record
    `domain.verification_failed` when a domain that allowed sending no longer does."""
    keys = await stored_keys(pool, domain)
    report = await verify(settings, domain, keys, resolver=resolver)
    failed = [
        {"check": c.name, "found": c.found, "expected": c.expected, "fix": c.fix}
        for c in report.failed
    ]
    await pool.execute(
        SQL["store_verification"],
        domain,
        report.return_path,
        report.tracking,
        report.status,
        report.sending_allowed,
        report.as_json(),
        failed,
        report.passed("return_path"),
        report.passed("tracking") and report.passed("tracking_tls"),
    )
    return report


class Reverifier:
    """Re-checks stored domains whose result is older than `max_age` seconds, every `tick`.

    Runs in the API process: the API is the role that reads the result (its sends are
    refused at the door on it), it already runs background work (sequences' scheduler), and
    DNS and TLS probes with timeouts of seconds have no place in the MTA's delivery loop.
    Each domain is claimed by one statement (checked_at moved forward), so several API
    processes never check the same domain twice.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        tick: float = TICK_SECONDS,
        max_age: float = RECHECK_SECONDS,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.tick = tick
        self.max_age = max_age
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="domain-reverifier")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run_once(self) -> list[Report]:
        reports = []
        await self.pool.execute(SQL["add_missing_verifications"])
        for row in await self.pool.fetch(SQL["claim_due_verifications"], self.max_age):
            try:
                reports.append(await verify_and_store(self.pool, self.settings, row["domain"]))
            except DATABASE_ERRORS:
                raise
            except Exception:  # a bug one domain's DNS sets off must not stop the others
                log.exception(
                    "domain verification failed",
                    extra={"action": "domain_reverify", "domain": row["domain"]},
                )
        return reports

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except DATABASE_ERRORS as exc:
                log.warning(
                    "domain re-verification failed",
                    extra={"action": "domain_reverify", "error": str(exc)},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.tick)


def table(report: Report) -> str:
    """The CLI's report: one line per check, then what to fix."""
    rows = [(c.status.upper(), c.name, c.subject, c.found) for c in report.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{report.domain}: {report.status.upper()}"]
    for status, name, subject, found in rows:
        lines.append(
            f"  {status:<{widths[0]}}  {name:<{widths[1]}}  {subject:<{widths[2]}}  {found}"
        )
    problems = [c for c in report.checks if c.status != PASS]
    if problems:
        lines.append("")
        lines.append("To fix:")
        for c in problems:
            lines.append(f"  {c.name}: {c.fix}")
            lines.append(f"    expected: {c.expected}")
    lines.append("")
    lines.append(
        "Live sending from this domain is "
        + ("allowed." if report.sending_allowed else "refused until DKIM and DMARC pass.")
    )
    return "\n".join(lines)
