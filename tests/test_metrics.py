"""/metrics and /healthz over real HTTP."""

from __future__ import annotations

import time

import httpx

from shared.metrics import ERRORS, REQUESTS, Health, serve


def test_metrics_endpoint_serves_the_node_metrics() -> None:
    REQUESTS.labels(status="PENDING").set(7)
    ERRORS.labels(process="test", kind="RpcTransportError").inc()
    server = serve(0, Health(stale_after_s=60))
    try:
        body = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics").text
    finally:
        server.shutdown()
    assert 'hodlai_requests{status="PENDING"} 7.0' in body
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
