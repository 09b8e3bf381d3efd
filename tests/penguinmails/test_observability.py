"""The ops app every role serves on its metrics address: /metrics, and a /healthz that says
up or down and nothing else, whoever asks; why it is down goes to the process log."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from penguinmails.database import create_pool
from penguinmails.observability import HEALTH_TIMEOUT, ops_app, start_ops_server


async def _serve(app: web.Application) -> tuple[str, web.AppRunner]:
    runner = await start_ops_server(app, "127.0.0.1:0")
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}", runner


async def test_healthz_is_ok_and_metrics_are_the_roles_registry(pool, http):
    registry = CollectorRegistry()
    Counter("penguinmails_test_things", "Things.", registry=registry).inc()
    url, runner = await _serve(ops_app(pool, registry))
    try:
        async with http.get(url + "/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        async with http.get(url + "/metrics") as response:
            assert response.status == 200
            assert "penguinmails_test_things_total 1.0" in await response.text()
    finally:
        await runner.cleanup()


async def test_healthz_says_unavailable_and_only_the_log_says_why(database_url, http, caplog):
    dead = await create_pool(database_url, min_size=1, max_size=1)
    await dead.close()
    url, runner = await _serve(ops_app(dead, CollectorRegistry(), role="mta"))
    try:
        with caplog.at_level(logging.WARNING, logger="penguinmails.observability"):
            async with http.get(url + "/healthz") as response:
                assert response.status == 503
                assert await response.json() == {"status": "unavailable"}
    finally:
        await runner.cleanup()
    (record,) = [r for r in caplog.records if r.name == "penguinmails.observability"]
    assert record.role == "mta"
    assert "closed" in record.error


async def test_a_busy_pool_is_unavailable_within_the_health_timeout(database_url, http):
    busy = await create_pool(database_url, min_size=1, max_size=1)
    url, runner = await _serve(ops_app(busy, CollectorRegistry(), role="mta"))
    try:
        async with busy.acquire():  # the only connection: the check cannot get one
            # An answer at all says the check gave up on its own: one that waited for a
            # connection would still be waiting when the client's patience runs out.
            patience = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT + 5)
            async with http.get(url + "/healthz", timeout=patience) as response:
                assert response.status == 503
                assert await response.json() == {"status": "unavailable"}
    finally:
        await runner.cleanup()
        await busy.close()


async def test_a_failing_database_is_logged_once_not_once_per_probe(database_url, http, caplog):
    dead = await create_pool(database_url, min_size=1, max_size=1)
    await dead.close()
    url, runner = await _serve(ops_app(dead, CollectorRegistry(), role="inbound"))
    try:
        with caplog.at_level(logging.WARNING, logger="penguinmails.observability"):
            for _ in range(5):
                async with http.get(url + "/healthz") as response:
                    assert response.status == 503
    finally:
        await runner.cleanup()
    assert len([r for r in caplog.records if r.name == "penguinmails.observability"]) == 1
