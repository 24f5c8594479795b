"""/metrics and /healthz over real HTTP."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

from shared.errors import ConfigError, StoreBusyError, TransitionConflict
from shared.metrics import ERRORS, READ_TIMEOUT_S, REQUESTS, Health, serve
from shared.runtime import run_loop


def test_metrics_endpoint_serves_the_node_metrics() -> None:
    # A status no process sets: an indexer loop an earlier test ran in this process may still
    # refresh the real statuses from its own database.
    REQUESTS.labels(status="METRICS_TEST").set(7)
    ERRORS.labels(process="test", kind="RpcTransportError").inc()
    server = serve(0, Health(stale_after_s=60))
    try:
        body = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics").text
    finally:
        server.shutdown()
    assert 'hodlai_requests{status="METRICS_TEST"} 7.0' in body
    assert 'hodlai_errors_total{kind="RpcTransportError",process="test"}' in body
    assert "hodlai_llm_latency_seconds_bucket" in body or "hodlai_llm_latency_seconds" in body


def test_healthz_turns_503_when_the_loop_stops_beating() -> None:
    health = Health(stale_after_s=0.2)
    server = serve(0, health)
    url = f"http://127.0.0.1:{server.server_port}/healthz"
    try:
        health.beat("polled block 12")
        ok = httpx.get(url)
        time.sleep(0.3)
        stale = httpx.get(url)
    finally:
        server.shutdown()
    assert ok.status_code == 200 and ok.json() == {"ok": True, "detail": "polled block 12"}
    assert stale.status_code == 503 and "no healthy loop iteration" in stale.json()["detail"]


def test_idle_connections_do_not_cost_a_thread_each_and_do_not_block_health() -> None:
    before = threading.active_count()
    server = serve(0, Health(stale_after_s=60))
    idle: list[socket.socket] = []
    try:
        for _ in range(60):  # connected, never sending a request
            idle.append(socket.create_connection(("127.0.0.1", server.server_port)))
        time.sleep(0.2)  # let the server accept them all
        assert threading.active_count() <= before + 1, threading.enumerate()
        started = time.monotonic()
        answer = httpx.get(f"http://127.0.0.1:{server.server_port}/healthz", timeout=5)
        assert answer.status_code == 200 and time.monotonic() - started < 1.0
        # A silent client is dropped once its read timeout is over.
        idle[0].settimeout(READ_TIMEOUT_S + 5)
        assert idle[0].recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()
    assert threading.active_count() <= before


def test_stopping_with_idle_connections_open_ends_them_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = serve(0, Health(stale_after_s=60))
    idle = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(20)]
    try:
        time.sleep(0.2)
        for sock in idle[10:]:  # some clients leave just as the server stops
            sock.close()
        server.shutdown()
        idle[0].settimeout(5)
        assert idle[0].recv(1) == b""  # closed by the server, not left hanging
    finally:
        for sock in idle:
            sock.close()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_a_metrics_port_in_use_is_a_config_error_naming_the_setting() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"HODLAI_METRICS_PORT: .*:{port}: in use"):
            serve(port, Health(stale_after_s=60))
    with pytest.raises(ConfigError, match="not a TCP port"):
        serve(65536, Health(stale_after_s=60))


async def test_healthz_turns_503_while_every_loop_step_fails_permanently() -> None:
    health = Health(stale_after_s=60)
    server = serve(0, health)
    url = f"http://127.0.0.1:{server.server_port}/healthz"
    stop = asyncio.Event()
    fail = True

    async def step() -> float:
        if fail:
            raise TransitionConflict("cursor moved: is another indexer writing?")
        return 0.05

    loop = asyncio.create_task(run_loop("test", step, stop=stop, health=health))
    try:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 10
            while (answer := await client.get(url)).status_code == 200:
                assert time.monotonic() < deadline, "stayed healthy while every step failed"
                await asyncio.sleep(0.05)
            assert answer.status_code == 503
            assert "failed permanently" in answer.json()["detail"]
            assert "TransitionConflict" in answer.json()["detail"]
            fail = False  # the next step succeeds: healthy again
            deadline = time.monotonic() + 10
            while (answer := await client.get(url)).status_code != 200:
                assert time.monotonic() < deadline, "did not recover after a healthy step"
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await loop
        server.shutdown()


async def test_retryable_failures_alone_do_not_make_the_loop_unhealthy_at_once() -> None:
    health = Health(stale_after_s=60)
    failures = 0
    three_failed = asyncio.Event()

    async def step() -> float:
        nonlocal failures
        failures += 1
        if failures == 3:
            three_failed.set()
        raise StoreBusyError("locked")

    stop = asyncio.Event()
    loop = asyncio.create_task(run_loop("test", step, stop=stop, health=health))
    await asyncio.wait_for(three_failed.wait(), timeout=10)
    assert health.check()[0]  # back-off handles it; staleness would report it later
    stop.set()
    await loop
