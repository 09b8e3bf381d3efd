"""PenguinMails (sync, urllib) and AsyncPenguinMails (aiohttp): the same resources, the same
errors, the same retries. Answers are the API's objects as the API names them."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, cast

import aiohttp

from penguinmails_client import _core
from penguinmails_client._generated import (
    BatchSendResult,
    BulkSendResult,
    Campaign,
    CampaignAnalytics,
    Contact,
    Deleted,
    Enrollment,
    Message,
    RenderedTemplate,
    SendResult,
    Template,
    Webhook,
    WebhookCreated,
    WebhookTestResult,
)
from penguinmails_client.errors import PenguinMailsError

Body = Mapping[str, Any]
Page = dict[str, Any]  # {"items": [...], "has_more": bool, "next_cursor": str | None}


def _options(
    api_key: str,
    base_url: str | None,
    max_retries: int,
    retry_delay: float,
    max_retry_delay: float,
    timeout: float,
) -> _core.Options:
    if not api_key:
        raise PenguinMailsError("api_key is required", code="MISSING_API_KEY", status=0)
    return _core.Options(
        api_key, _core.api_root(base_url), max_retries, retry_delay, max_retry_delay, timeout
    )


# -- sync ---------------------------------------------------------------------------------------


class _Sync:
    def __init__(self, options: _core.Options) -> None:
        self.options = options

    def send(self, request: _core.Request) -> Any:
        attempt = 0
        while True:
            try:
                return self._once(request)
            except PenguinMailsError as error:
                delay = _core.retry_delay(self.options, request, error, attempt)
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1

    def _once(self, request: _core.Request) -> Any:
        http = urllib.request.Request(
            request.url, data=request.body, headers=request.headers, method=request.method
        )
        try:
            with urllib.request.urlopen(http, timeout=self.options.timeout) as response:
                return _core.answer(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as failed:
            with failed:
                return _core.answer(failed.code, dict(failed.headers), failed.read())
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise _core.network_error(
                reason if isinstance(reason, BaseException) else exc, self.options.timeout
            ) from exc

    def call(self, op: str, params: Mapping[str, str] | None = None, **kw: Any) -> Any:
        return self.send(_core.operation(self.options, op, params, **kw))

    def pages(self, op: str, params: Mapping[str, str] | None, query: Body) -> Iterator[Any]:
        cursor = None
        while True:
            page = self.call(op, params, query={**query, "cursor": cursor})
            yield from page["items"]
            if not page["has_more"] or not page["next_cursor"]:
                return
            cursor = page["next_cursor"]


class _SyncResource:
    def __init__(self, transport: _Sync) -> None:
        self._t = transport


class Campaigns(_SyncResource):
    def create(self, campaign: Body) -> Campaign:
        return cast(Campaign, self._t.call("create_campaign", body=campaign))

    def get(self, id: str) -> Campaign:
        return cast(Campaign, self._t.call("get_campaign", {"id": id}))

    def list(self, **query: Any) -> Page:
        return cast(Page, self._t.call("list_campaigns", query=query))

    def iterate(self, **query: Any) -> Iterator[Campaign]:
        return self._t.pages("list_campaigns", None, query)

    def update(self, id: str, changes: Body) -> Campaign:
        return cast(Campaign, self._t.call("update_campaign", {"id": id}, body=changes))

    def send(self, id: str, options: Body | None = None) -> Campaign:
        return cast(Campaign, self._t.call("send_campaign", {"id": id}, body=options or {}))

    def pause(self, id: str) -> Campaign:
        return cast(Campaign, self._t.call("pause_campaign", {"id": id}))

    def resume(self, id: str) -> Campaign:
        return cast(Campaign, self._t.call("resume_campaign", {"id": id}))

    def cancel(self, id: str) -> Campaign:
        return cast(Campaign, self._t.call("cancel_campaign", {"id": id}))

    def trigger_sequence(
        self, contact_id: str, sequence_id: str, *, re_enroll: bool = False
    ) -> Enrollment:
        body = {"sequence": sequence_id, "re_enroll": re_enroll}
        return cast(Enrollment, self._t.call("trigger_sequence", {"id": contact_id}, body=body))


class Emails(_SyncResource):
    def send(self, email: Body, *, idempotency_key: str | None = None) -> SendResult:
        result = self._t.call("send_email", body=email, idempotency_key=idempotency_key)
        return cast(SendResult, result)

    def send_bulk(self, request: Body, *, idempotency_key: str | None = None) -> BulkSendResult:
        result = self._t.call("send_bulk", body=request, idempotency_key=idempotency_key)
        return cast(BulkSendResult, result)

    def batch(self, request: Body, *, idempotency_key: str | None = None) -> BatchSendResult:
        result = self._t.call("send_batch", body=request, idempotency_key=idempotency_key)
        return cast(BatchSendResult, result)


class Contacts(_SyncResource):
    def create(self, contact: Body) -> Contact:
        return cast(Contact, self._t.call("create_contact", body=contact))

    def get(self, id: str) -> Contact:
        return cast(Contact, self._t.call("get_contact", {"id": id}))

    def list(self, **query: Any) -> Page:
        return cast(Page, self._t.call("list_contacts", query=query))

    def iterate(self, **query: Any) -> Iterator[Contact]:
        return self._t.pages("list_contacts", None, query)

    def update(self, id: str, changes: Body) -> Contact:
        return cast(Contact, self._t.call("update_contact", {"id": id}, body=changes))

    def delete(self, id: str) -> Deleted:
        return cast(Deleted, self._t.call("delete_contact", {"id": id}))


class Analytics(_SyncResource):
    def campaign(
        self, id: str, *, period: str | None = None, interval: str | None = None
    ) -> CampaignAnalytics:
        query = {"period": period, "interval": interval}
        return cast(CampaignAnalytics, self._t.call("campaign_analytics", {"id": id}, query=query))


class Webhooks(_SyncResource):
    def create(self, webhook: Body) -> WebhookCreated:
        return cast(WebhookCreated, self._t.call("create_webhook", body=webhook))

    def get(self, id: str) -> Webhook:
        return cast(Webhook, self._t.call("get_webhook", {"id": id}))

    def list(self, **query: Any) -> Page:
        return cast(Page, self._t.call("list_webhooks", query=query))

    def update(self, id: str, changes: Body) -> Webhook:
        return cast(Webhook, self._t.call("update_webhook", {"id": id}, body=changes))

    def delete(self, id: str) -> Deleted:
        return cast(Deleted, self._t.call("delete_webhook", {"id": id}))

    def test(self, id: str) -> WebhookTestResult:
        return cast(WebhookTestResult, self._t.call("test_webhook", {"id": id}))


class Templates(_SyncResource):
    def create(self, template: Body) -> Template:
        return cast(Template, self._t.call("create_template", body=template))

    def get(self, id: str) -> Template:
        return cast(Template, self._t.call("get_template", {"id": id}))

    def list(self, **query: Any) -> Page:
        return cast(Page, self._t.call("list_templates", query=query))

    def update(self, id: str, changes: Body) -> Template:
        return cast(Template, self._t.call("update_template", {"id": id}, body=changes))

    def delete(self, id: str) -> Deleted:
        return cast(Deleted, self._t.call("delete_template", {"id": id}))

    def render(self, id: str, request: Body | None = None) -> RenderedTemplate:
        result = self._t.call("render_template", {"id": id}, body=request or {})
        return cast(RenderedTemplate, result)


class Messages(_SyncResource):
    def get(self, id: str) -> Message:
        return cast(Message, self._t.call("get_message", {"id": id}))


class AI(_SyncResource):
    """POST /api/v1/ai/optimize-content and /ai/analyze-contact: on a server version that has
    them (an older one answers NotFoundError)."""

    def optimize_content(self, request: Body) -> dict[str, Any]:
        built = _core.build(self._t.options, "POST", "/ai/optimize-content", body=request)
        return cast(dict[str, Any], self._t.send(built))

    def analyze_contact(self, request: Body) -> dict[str, Any]:
        built = _core.build(self._t.options, "POST", "/ai/analyze-contact", body=request)
        return cast(dict[str, Any], self._t.send(built))


class PenguinMails:
    """The sync client. `base_url`: the server's origin (default PENGUINMAILS_BASE_URL, else
    http://127.0.0.1:8080). Reads, deletes and sends (which carry an idempotency key, one
    generated per send unless given) are retried on 429, 5xx and network errors."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        max_retries: int = 2,
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        timeout: float = 30.0,
    ) -> None:
        opts = _options(api_key, base_url, max_retries, retry_delay, max_retry_delay, timeout)
        self._transport = _Sync(opts)
        self.campaigns = Campaigns(self._transport)
        self.emails = Emails(self._transport)
        self.contacts = Contacts(self._transport)
        self.analytics = Analytics(self._transport)
        self.webhooks = Webhooks(self._transport)
        self.templates = Templates(self._transport)
        self.messages = Messages(self._transport)
        self.ai = AI(self._transport)

    def request(self, method: str, path: str, body: Body | None = None, **query: Any) -> Any:
        """Any path under /api/v1, for an endpoint without a method here."""
        return self._transport.send(
            _core.build(self._transport.options, method, path, query=query, body=body)
        )


# -- async --------------------------------------------------------------------------------------


class _Async:
    def __init__(self, options: _core.Options) -> None:
        self.options = options
        self.session: aiohttp.ClientSession | None = None

    async def send(self, request: _core.Request) -> Any:
        attempt = 0
        while True:
            try:
                return await self._once(request)
            except PenguinMailsError as error:
                delay = _core.retry_delay(self.options, request, error, attempt)
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    async def _once(self, request: _core.Request) -> Any:
        if self.session is None:
            self.session = aiohttp.ClientSession()
        try:
            async with self.session.request(
                request.method,
                request.url,
                data=request.body,
                headers=request.headers,
                timeout=aiohttp.ClientTimeout(total=self.options.timeout),
            ) as response:
                raw = await response.read()
                return _core.answer(response.status, dict(response.headers), raw)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _core.network_error(exc, self.options.timeout) from exc

    async def call(self, op: str, params: Mapping[str, str] | None = None, **kw: Any) -> Any:
        return await self.send(_core.operation(self.options, op, params, **kw))

    async def pages(
        self, op: str, params: Mapping[str, str] | None, query: Body
    ) -> AsyncIterator[Any]:
        cursor = None
        while True:
            page = await self.call(op, params, query={**query, "cursor": cursor})
            for item in page["items"]:
                yield item
            if not page["has_more"] or not page["next_cursor"]:
                return
            cursor = page["next_cursor"]


class _AsyncResource:
    def __init__(self, transport: _Async) -> None:
        self._t = transport


class AsyncCampaigns(_AsyncResource):
    async def create(self, campaign: Body) -> Campaign:
        return cast(Campaign, await self._t.call("create_campaign", body=campaign))

    async def get(self, id: str) -> Campaign:
        return cast(Campaign, await self._t.call("get_campaign", {"id": id}))

    async def list(self, **query: Any) -> Page:
        return cast(Page, await self._t.call("list_campaigns", query=query))

    def iterate(self, **query: Any) -> AsyncIterator[Campaign]:
        return self._t.pages("list_campaigns", None, query)

    async def update(self, id: str, changes: Body) -> Campaign:
        return cast(Campaign, await self._t.call("update_campaign", {"id": id}, body=changes))

    async def send(self, id: str, options: Body | None = None) -> Campaign:
        result = await self._t.call("send_campaign", {"id": id}, body=options or {})
        return cast(Campaign, result)

    async def pause(self, id: str) -> Campaign:
        return cast(Campaign, await self._t.call("pause_campaign", {"id": id}))

    async def resume(self, id: str) -> Campaign:
        return cast(Campaign, await self._t.call("resume_campaign", {"id": id}))

    async def cancel(self, id: str) -> Campaign:
        return cast(Campaign, await self._t.call("cancel_campaign", {"id": id}))

    async def trigger_sequence(
        self, contact_id: str, sequence_id: str, *, re_enroll: bool = False
    ) -> Enrollment:
        body = {"sequence": sequence_id, "re_enroll": re_enroll}
        result = await self._t.call("trigger_sequence", {"id": contact_id}, body=body)
        return cast(Enrollment, result)


class AsyncEmails(_AsyncResource):
    async def send(self, email: Body, *, idempotency_key: str | None = None) -> SendResult:
        result = await self._t.call("send_email", body=email, idempotency_key=idempotency_key)
        return cast(SendResult, result)

    async def send_bulk(
        self, request: Body, *, idempotency_key: str | None = None
    ) -> BulkSendResult:
        result = await self._t.call("send_bulk", body=request, idempotency_key=idempotency_key)
        return cast(BulkSendResult, result)

    async def batch(self, request: Body, *, idempotency_key: str | None = None) -> BatchSendResult:
        result = await self._t.call("send_batch", body=request, idempotency_key=idempotency_key)
        return cast(BatchSendResult, result)


class AsyncContacts(_AsyncResource):
    async def create(self, contact: Body) -> Contact:
        return cast(Contact, await self._t.call("create_contact", body=contact))

    async def get(self, id: str) -> Contact:
        return cast(Contact, await self._t.call("get_contact", {"id": id}))

    async def list(self, **query: Any) -> Page:
        return cast(Page, await self._t.call("list_contacts", query=query))

    def iterate(self, **query: Any) -> AsyncIterator[Contact]:
        return self._t.pages("list_contacts", None, query)

    async def update(self, id: str, changes: Body) -> Contact:
        return cast(Contact, await self._t.call("update_contact", {"id": id}, body=changes))

    async def delete(self, id: str) -> Deleted:
        return cast(Deleted, await self._t.call("delete_contact", {"id": id}))


class AsyncAnalytics(_AsyncResource):
    async def campaign(
        self, id: str, *, period: str | None = None, interval: str | None = None
    ) -> CampaignAnalytics:
        query = {"period": period, "interval": interval}
        result = await self._t.call("campaign_analytics", {"id": id}, query=query)
        return cast(CampaignAnalytics, result)


class AsyncWebhooks(_AsyncResource):
    async def create(self, webhook: Body) -> WebhookCreated:
        return cast(WebhookCreated, await self._t.call("create_webhook", body=webhook))

    async def get(self, id: str) -> Webhook:
        return cast(Webhook, await self._t.call("get_webhook", {"id": id}))

    async def list(self, **query: Any) -> Page:
        return cast(Page, await self._t.call("list_webhooks", query=query))

    async def update(self, id: str, changes: Body) -> Webhook:
        return cast(Webhook, await self._t.call("update_webhook", {"id": id}, body=changes))

    async def delete(self, id: str) -> Deleted:
        return cast(Deleted, await self._t.call("delete_webhook", {"id": id}))

    async def test(self, id: str) -> WebhookTestResult:
        return cast(WebhookTestResult, await self._t.call("test_webhook", {"id": id}))


class AsyncTemplates(_AsyncResource):
    async def create(self, template: Body) -> Template:
        return cast(Template, await self._t.call("create_template", body=template))

    async def get(self, id: str) -> Template:
        return cast(Template, await self._t.call("get_template", {"id": id}))

    async def list(self, **query: Any) -> Page:
        return cast(Page, await self._t.call("list_templates", query=query))

    async def update(self, id: str, changes: Body) -> Template:
        return cast(Template, await self._t.call("update_template", {"id": id}, body=changes))

    async def delete(self, id: str) -> Deleted:
        return cast(Deleted, await self._t.call("delete_template", {"id": id}))

    async def render(self, id: str, request: Body | None = None) -> RenderedTemplate:
        result = await self._t.call("render_template", {"id": id}, body=request or {})
        return cast(RenderedTemplate, result)


class AsyncMessages(_AsyncResource):
    async def get(self, id: str) -> Message:
        return cast(Message, await self._t.call("get_message", {"id": id}))


class AsyncAI(_AsyncResource):
    """As AI: needs a server version with the AI endpoints."""

    async def optimize_content(self, request: Body) -> dict[str, Any]:
        built = _core.build(self._t.options, "POST", "/ai/optimize-content", body=request)
        return cast(dict[str, Any], await self._t.send(built))

    async def analyze_contact(self, request: Body) -> dict[str, Any]:
        built = _core.build(self._t.options, "POST", "/ai/analyze-contact", body=request)
        return cast(dict[str, Any], await self._t.send(built))


class AsyncPenguinMails:
    """The async client (aiohttp): as PenguinMails, with `await`. Close it (`await
    client.close()`, or `async with`) to release its connections."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        *,
        max_retries: int = 2,
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        timeout: float = 30.0,
    ) -> None:
        opts = _options(api_key, base_url, max_retries, retry_delay, max_retry_delay, timeout)
        self._transport = _Async(opts)
        self.campaigns = AsyncCampaigns(self._transport)
        self.emails = AsyncEmails(self._transport)
        self.contacts = AsyncContacts(self._transport)
        self.analytics = AsyncAnalytics(self._transport)
        self.webhooks = AsyncWebhooks(self._transport)
        self.templates = AsyncTemplates(self._transport)
        self.messages = AsyncMessages(self._transport)
        self.ai = AsyncAI(self._transport)

    async def request(self, method: str, path: str, body: Body | None = None, **query: Any) -> Any:
        return await self._transport.send(
            _core.build(self._transport.options, method, path, query=query, body=body)
        )

    async def close(self) -> None:
        if self._transport.session is not None:
            await self._transport.session.close()
            self._transport.session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
