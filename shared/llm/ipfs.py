"""Best-effort pinning of reasoning traces to an IPFS HTTP API (kubo's ``/api/v0/add``).

Guarantees: :func:`pin_trace` never raises for anything the network or the IPFS node does;
a failure is logged (``ipfs_pin_failed``) and that is all. The CID we computed is the
authority: the answer goes on chain with it whether or not pinning worked, and when the
IPFS node reports another CID for the same bytes we log ``ipfs_cid_mismatch`` and keep ours
(the stored trace bytes can be pinned again later and will hash to our CID).

``cid-version=1&raw-leaves=true`` makes kubo store a single-block file as a raw leaf, whose
CID is exactly :func:`shared.llm.cid.cid_v1_raw` of the bytes (traces are far below the
256 KiB chunk size).
"""

from __future__ import annotations

import httpx
import structlog

log = structlog.get_logger(__name__)

# Seconds for one pin; pinning is off the answer's critical path, so it may be slow, but a
# dead IPFS node must not pile up pending pins.
PIN_TIMEOUT_S = 10.0
ADD_PATH = "/api/v0/add"
ADD_PARAMS = {"cid-version": "1", "raw-leaves": "true", "pin": "true", "hash": "sha2-256"}


async def pin_trace(
    client: httpx.AsyncClient, api_url: str, data: bytes, *, cid: str, request_id: int
) -> bool:
    """Add ``data`` to the IPFS node at ``api_url``; True when it holds it under ``cid``."""
    url = api_url.rstrip("/") + ADD_PATH
    try:
        response = await client.post(
            url,
            params=ADD_PARAMS,
            files={"file": (f"{cid}.json", data, "application/json")},
            timeout=PIN_TIMEOUT_S,
        )
        response.raise_for_status()
        reported = str(response.json().get("Hash", ""))
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        log.warning(
            "ipfs_pin_failed", request_id=str(request_id), cid=cid,
            error=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
        return False
    if reported != cid:
        log.warning("ipfs_cid_mismatch", request_id=str(request_id), cid=cid, reported=reported)
        return False
    log.debug("ipfs_pinned", request_id=str(request_id), cid=cid)
    return True
