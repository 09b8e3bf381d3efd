"""The tracker's public URLs, built by the MTA and verified by the tracker.

Open pixel `/o/<token>.gif`, click `/c/<token>`, unsubscribe `/u/<token>`. Every token is
signed (penguinmails.tokens) and carries what the tracker needs (the queue id of the
message; for clicks the link's index and URL), so verifying a hit needs no lookup and a
click can only ever redirect to a URL we signed. The redirect itself (`redirect_url`) adds the
click's conversion token (penguinmails.conversions) when the tracker is configured to.
"""

from __future__ import annotations

from dataclasses import dataclass

from penguinmails import conversions
from penguinmails.tokens import BadToken, LinkSigner


@dataclass(frozen=True)
class Click:
    queue_id: int
    index: int
    url: str


class Links:
    def __init__(self, signer: LinkSigner, base_url: str, conversion_param: str = "") -> None:
        self._signer = signer
        self._base = base_url.rstrip("/")
        self._conversion_param = conversion_param  # empty: redirects carry no token

    def open_url(self, queue_id: int) -> str:
        return f"{self._base}/o/{self._signer.sign('open', queue_id)}.gif"

    def click_url(self, queue_id: int, index: int, url: str) -> str:
        return f"{self._base}/c/{self._signer.sign('click', queue_id, index, url)}"

    def unsubscribe_url(self, queue_id: int) -> str:
        return f"{self._base}/u/{self._signer.sign('unsub', queue_id)}"

    def open_token(self, token: str) -> int:
        return _single_id(self._signer.verify("open", token.removesuffix(".gif")))

    def click_token(self, token: str) -> Click:
        fields = self._signer.verify("click", token)
        if len(fields) != 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise BadToken("malformed click token")
        return Click(int(fields[0]), int(fields[1]), fields[2])

    def redirect_url(self, click: Click, clicked_at: float) -> str:
        """Where a click goes: its signed URL, with the conversion token parameter added."""
        if not self._conversion_param:
            return click.url
        token = conversions.issue(self._signer, click.queue_id, click.index, clicked_at)
        return conversions.with_parameter(click.url, self._conversion_param, token)

    def unsubscribe_token(self, token: str) -> int:
        return _single_id(self._signer.verify("unsub", token))


def _single_id(fields: list[str]) -> int:
    if len(fields) != 1 or not fields[0].isdigit():
        raise BadToken("malformed token")
    return int(fields[0])
