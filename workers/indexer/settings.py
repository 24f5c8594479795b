"""The indexer's settings: the core ones plus ``HODLAI_INDEXER_*``."""

from __future__ import annotations

from pydantic import Field

from shared.config import CoreSettings


class IndexerSettings(CoreSettings):
    """Settings of ``hodlai indexer``."""

    # Blocks per eth_getLogs at most. Alchemy-style providers refuse more than 2,000 and public
    # BSC endpoints 5,000, so 2,000 works almost everywhere without a first refusal; the range
    # halves on a refusal anyway.
    indexer_max_range: int = Field(default=2000, ge=1, le=1_000_000)
    # Logs one poll should carry at most; a range that returned more is halved for the next
    # poll. Bounds memory per poll (~4 KB per request log) and keeps ingest pipelined.
    indexer_target_logs: int = Field(default=5000, ge=1, le=1_000_000)
    # Seconds between polls once caught up (none while behind). 0.5 s is a sixth of a BSC
    # block: a request is seen within ~0.5 s of its block being confirmed.
    indexer_poll_interval_s: float = Field(default=0.5, gt=0, le=60)
    # Polls between backup re-scans of recent accepted blocks (20 x 0.5 s = every ~10 s).
    indexer_rescan_every: int = Field(default=20, ge=1, le=1_000_000)
    # Accepted blocks the backup re-scan reads again, counted down from the cursor: larger
    # than how far a lagging load-balanced backend trails the head (seconds, i.e. a few blocks).
    indexer_rescan_blocks: int = Field(default=64, ge=1, le=100_000)
    # Blocks below the cursor whose hashes are kept for reorg detection; 10,000 BSC blocks are
    # ~8 h, far beyond any reorg seen there.
    indexer_block_history: int = Field(default=10_000, ge=16, le=10_000_000)
    # Seconds for one JSON-RPC exchange before it counts as failed (and fails over).
    indexer_rpc_timeout_s: float = Field(default=10.0, gt=0, le=300)
