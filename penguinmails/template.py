"""The template language of subjects and bodies: variables, a default filter, and spintax.

    {{name}}                         the recipient's value; an error if it has none
    {{company | default: "there"}}   a fallback when the value is missing, null or empty
    {{name | capitalize}}            also: upper, lower, trim
    {Hi|Hello|Hey}                   spintax: one option per recipient (options may nest and
                                     hold variables)
    {{ "{" }}                        a quoted literal, for the rare brace that must stay

A `{` is spintax only when its matching `}` closes a group with at least one `|` at that
level; otherwise it is text, so CSS rules (`p { margin: 0 }`) pass through untouched.

It is deliberately small and safe: no attribute access beyond dotted keys, no loops, no code,
so a template written by a tenant cannot reach anything but the recipient's own values.
Spintax choices are a hash of the message id and the group as written, so a retry sends the
same words, and a group picks alike wherever it appears in one message (subject, html, the
text part derived from the html): "{Hi|Hello}" greets the same way in both parts. Whatever a
variable holds is HTML-escaped when the caller renders an HTML part.

Templates are checked when a message is queued (`check`), so a missing variable is an error
the API reports, not a blank in a sent email; rendering at delivery time raises the same
TemplateError should a row bypass that check.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from itertools import chain
from typing import Any

# Values the composer supplies for every message; a template may use them without the
# sender providing them.
BUILTINS = frozenset({"email", "unsubscribe_url"})

_FILTERS: dict[str, Callable[[str], str]] = {
    "upper": str.upper,
    "lower": str.lower,
    "capitalize": lambda s: s[:1].upper() + s[1:],
    "trim": str.strip,
}
_MAX_TEMPLATE = 1_000_000  # characters; bodies beyond this are not email
_MAX_DEPTH = 8  # nested spintax groups; deeper braces are text
_SPECIAL = re.compile(r"[{}|]")


class TemplateError(ValueError):
    """A template that cannot be parsed, or a value it needs that the recipient lacks."""


@dataclass(frozen=True, slots=True)
class Var:
    name: str  # a dotted path, or "" for a quoted literal
    default: str | None
    filters: tuple[str, ...]
    literal: str | None = None
    key: str = ""  # the expression as written: equal keys render equal text


@dataclass(frozen=True, slots=True)
class Spin:
    source: str  # the group as written, `{a|b}`: what names it when choosing
    options: tuple[tuple[Node, ...], ...]


Node = str | Var | Spin


class _Parser:
    """Recursive descent with memoised spintax attempts.

    Whether a `{` opens a group depends only on the text after it, so each attempt is made
    once and remembered; with the depth cap, no template (however many braces) parses in
    worse than linear time per level.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.groups: dict[int, tuple[Spin, int] | None] = {}
        self.depth = 0

    def sequence(self, pos: int, in_spin: bool) -> tuple[list[Node], int]:
        """Nodes from `pos` up to the end, or (in spintax) up to the next `|` or `}`."""
        text = self.text
        nodes: list[Node] = []
        buf: list[str] = []
        n = len(text)
        while pos < n:
            nxt = _SPECIAL.search(text, pos)
            stop = nxt.start() if nxt else n
            if stop > pos:
                buf.append(text[pos:stop])
                pos = stop
                if pos >= n:
                    break
            ch = text[pos]
            if ch in "|}":
                if in_spin:
                    break
                buf.append(ch)
                pos += 1
                continue
            if text.startswith("{{", pos):
                end = text.find("}}", pos + 2)
                if end < 0:
                    raise TemplateError(f"unclosed '{{{{' at character {pos}")
                if buf:
                    nodes.append("".join(buf))
                    buf = []
                nodes.append(_expression(text[pos + 2 : end]))
                pos = end + 2
                continue
            group = self.group(pos)
            if group is None:
                buf.append("{")
                pos += 1
                continue
            if buf:
                nodes.append("".join(buf))
                buf = []
            nodes.append(group[0])
            pos = group[1]
        if buf:
            nodes.append("".join(buf))
        return nodes, pos

    def group(self, start: int) -> tuple[Spin, int] | None:
        """The spintax group opened by the `{` at `start`, or None when it is plain text."""
        if start in self.groups:
            return self.groups[start]
        result = None
        if self.depth < _MAX_DEPTH:
            self.depth += 1
            try:
                result = self._group(start)
            finally:
                self.depth -= 1
        self.groups[start] = result
        return result

    def _group(self, start: int) -> tuple[Spin, int] | None:
        options: list[tuple[Node, ...]] = []
        pos = start + 1
        while True:
            nodes, pos = self.sequence(pos, in_spin=True)
            options.append(tuple(nodes))
            if pos >= len(self.text):
                return None
            if self.text[pos] == "}":
                if len(options) < 2:
                    return None
                return Spin(self.text[start : pos + 1], tuple(options)), pos + 1
            pos += 1  # past "|"


def _expression(source: str) -> Var:
    parts = [p.strip() for p in _split_pipes(source)]
    head, filters = parts[0], parts[1:]
    if not head:
        raise TemplateError("empty '{{ }}'")
    literal = _quoted(head)
    if literal is None and not all(
        seg and (seg.replace("_", "a").replace("-", "a").isalnum()) for seg in head.split(".")
    ):
        raise TemplateError(f"not a variable name: {head!r}")
    default: str | None = None
    names: list[str] = []
    for item in filters:
        name, colon, arg = item.partition(":")
        name = name.strip()
        if name == "default":
            value = _quoted(arg.strip()) if colon else None
            if value is None:
                raise TemplateError(f'default needs a quoted value: {{{{{source}}}}}, e.g. "x"')
            default = value
        elif name in _FILTERS and not colon:
            names.append(name)
        else:
            raise TemplateError(f"unknown filter {item!r} (default, {', '.join(_FILTERS)})")
    name = "" if literal is not None else head
    return Var(name, default, tuple(names), literal, source.strip())


def _split_pipes(source: str) -> list[str]:
    """Split on `|` outside quotes, so a default may itself contain a pipe."""
    parts, buf, quote = [], [], ""
    for ch in source:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
            buf.append(ch)
        elif ch == "|":
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def _quoted(text: str) -> str | None:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return None


def lookup(values: Mapping[str, Any], name: str) -> Any:
    """A value by name, or by dotted path into nested objects (custom_fields.plan)."""
    if name in values:
        return values[name]
    node: Any = values
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass(frozen=True, slots=True)
class _Run:
    """Text between spintax groups, compiled for rendering: the literal pieces around each
    variable occurrence (`pieces[i]`, then variable `slots[i]`, ..., then `pieces[-1]`), one
    entry in `variables` per distinct expression; without variables, the text itself."""

    text: str
    variables: tuple[Var, ...]
    pieces: tuple[str, ...] = ()
    slots: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class _Choice:
    source: str
    options: tuple[tuple[_Run | _Choice, ...], ...]


def _compile_runs(nodes: Iterable[Node]) -> tuple[_Run | _Choice, ...]:
    chunks: list[_Run | _Choice] = []
    pieces: list[list[str]] = [[]]
    slots: list[int] = []
    fields: dict[str, int] = {}
    variables: list[Var] = []

    def flush() -> None:
        texts = tuple("".join(piece) for piece in pieces)
        if variables:
            chunks.append(_Run("", tuple(variables), texts, tuple(slots)))
        elif texts[0]:
            chunks.append(_Run(texts[0], ()))
        pieces[:] = [[]]
        for parts in (slots, variables):
            parts.clear()
        fields.clear()

    for node in nodes:
        if isinstance(node, str):
            pieces[-1].append(node)
        elif isinstance(node, Var):
            index = fields.setdefault(node.key, len(variables))
            if index == len(variables):
                variables.append(node)
            slots.append(index)
            pieces.append([])
        else:
            flush()
            chunks.append(_Choice(node.source, tuple(_compile_runs(o) for o in node.options)))
    flush()
    return tuple(chunks)


class Template:
    """A parsed template; parse once (see `compile`), render once per recipient."""

    __slots__ = ("chunks", "names", "nodes", "required", "source")

    def __init__(self, source: str) -> None:
        if len(source) > _MAX_TEMPLATE:
            raise TemplateError("template too large")
        self.source = source
        nodes, _ = _Parser(source).sequence(0, in_spin=False)
        self.nodes: tuple[Node, ...] = tuple(nodes)
        # Every variable without a default, in every spintax option: which option a recipient
        # gets varies, so each must be satisfiable for all of them.
        self.required: tuple[str, ...] = tuple(dict.fromkeys(_required(self.nodes)))
        self.names: tuple[str, ...] = tuple(dict.fromkeys(_names(self.nodes)))
        # Rendering works on runs, so a body that says {{first_name}} forty times looks the
        # value up once and splices it in at C speed (str.join).
        self.chunks = _compile_runs(self.nodes)

    @property
    def is_plain(self) -> bool:
        return len(self.nodes) <= 1 and all(isinstance(n, str) for n in self.nodes)

    def missing(self, values: Mapping[str, Any], builtins: Iterable[str] = BUILTINS) -> list[str]:
        known = set(builtins)
        return [n for n in self.required if n not in known and _empty(lookup(values, n))]

    def render(
        self,
        values: Mapping[str, Any],
        *,
        seed: str,
        escape: Callable[[str], str] | None = None,
    ) -> str:
        """The text for one recipient; `seed` (the message id) picks the spintax options."""
        if self.is_plain:
            return self.source
        out: list[str] = []
        _emit(self.chunks, values, seed, escape, out, {})
        return "".join(out)


def _emit(
    chunks: tuple[_Run | _Choice, ...],
    values: Mapping[str, Any],
    seed: str,
    escape: Callable[[str], str] | None,
    out: list[str],
    done: dict[str, str],
) -> None:
    """Append the text of `chunks`; `done` keeps each expression's text for this render."""
    for chunk in chunks:
        if isinstance(chunk, _Run):
            if not chunk.variables:
                out.append(chunk.text)
                continue
            texts = []
            for var in chunk.variables:
                text = done.get(var.key)
                if text is None:
                    text = _value(var, values)
                    if escape is not None:
                        text = escape(text)
                    done[var.key] = text
                texts.append(text)
            # Joins rather than str.format: format parses its pattern on every call (about
            # 40x slower for a 50 KB body that names the recipient in each paragraph).
            if len(texts) == 1:
                out.append(texts[0].join(chunk.pieces))
            else:
                # One piece more than slots: zip pairs all but the last, which follows.
                values_in_order = map(texts.__getitem__, chunk.slots)
                out.extend(chain.from_iterable(zip(chunk.pieces, values_in_order, strict=False)))
                out.append(chunk.pieces[-1])
        else:
            key = f"{seed}\x00{chunk.source}".encode("utf-8", "surrogatepass")
            digest = hashlib.blake2b(key, digest_size=8)
            choice = int.from_bytes(digest.digest(), "big") % len(chunk.options)
            _emit(chunk.options[choice], values, seed, escape, out, done)


def _empty(value: Any) -> bool:
    return value is None or value == ""


def _value(node: Var, values: Mapping[str, Any]) -> str:
    if node.literal is not None:
        return node.literal
    name = node.name
    raw = values[name] if name in values else lookup(values, name)
    if raw is None or raw == "" or raw is False:
        if node.default is not None:
            return node.default
        if raw is None:
            raise TemplateError(f"no value for {{{{{node.name}}}}} and no default")
    text = raw if type(raw) is str else _text(raw)
    for filter_name in node.filters:
        text = _FILTERS[filter_name](text)
    return text


def _names(nodes: Iterable[Node]) -> Iterable[str]:
    for node in nodes:
        if isinstance(node, Var):
            if node.literal is None:
                yield node.name
        elif isinstance(node, Spin):
            for option in node.options:
                yield from _names(option)


def _required(nodes: Iterable[Node]) -> Iterable[str]:
    for node in nodes:
        if isinstance(node, Var):
            if node.literal is None and node.default is None:
                yield node.name
        elif isinstance(node, Spin):
            for option in node.options:
                yield from _required(option)


@lru_cache(maxsize=2048)
def compile(source: str) -> Template:
    """The parsed template, cached: a campaign's body is parsed once, not per recipient."""
    return Template(source)


def check(fields: Mapping[str, str | None], values: Mapping[str, Any]) -> None:
    """Raise TemplateError("<field>: ...") for a bad template or a value `values` lacks."""
    for field_name, source in fields.items():
        if source is None:
            continue
        try:
            missing = compile(source).missing(values)
        except TemplateError as exc:
            raise TemplateError(f"{field_name}: {exc}") from None
        if missing:
            names = ", ".join(missing)
            raise TemplateError(f"{field_name}: no value for {names} and no default")
