"""Webhooks, the part the API and the tracker share: which URLs we may call, how requests are
signed, how endpoints are stored, and the one signed POST both of them send.

- `guard`: the address guard and the HTTP client built on it. An endpoint URL is chosen by a
  customer and fetched by our servers: left unchecked it would let anyone make us call our own
  metadata service, database or admin ports (SSRF). The URL is checked when it is registered
  and again, on every resolved address, before every request.
- `signing`: the secret format, secrets sealed at rest, and the request signatures.
- `endpoints`: endpoint storage (queries.sql beside it), used by the API.
- `post`: one signed POST through the guard, for the tracker's dispatcher and the API's test
  ping alike.

The delivery outbox and its retries are the tracker's (tracker/dispatcher.py).
"""

from __future__ import annotations


class InvalidEndpoint(ValueError):
    """A request to store an endpoint that cannot be accepted; names the offending field.

    Here rather than in one of the modules because the guard (url), the secret checks
    (secret) and endpoint storage (events, description) all raise it.
    """

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
