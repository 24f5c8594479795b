"""The indexer's settings: the core ones plus ``HODLAI_INDEXER_*``."""

from __future__ import annotations

from pydantic import Field

from workers.oracle.settings import OracleSettings


class IndexerSettings(OracleSettings):
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
    # Blocks of accepted history the indexer may roll back on its own. A deeper rollback (or
    # one past the stored history, or towards another chain id) halts it for an operator:
    # real reorgs on BSC/Ethereum are a few blocks, while a failover URL serving another or a
    # much shorter chain looks like a reorg of hundreds (issue 10). 64 is ~3 min of BSC blocks.
    max_reorg_depth: int = Field(default=64, ge=1, le=1_000_000)
    # Blocks below the head whose headers each poll fetches in its batch, to check their
    # logsBloom against the logs returned (a batch split across backends hides the newest
    # blocks' logs). Larger than how far a lagging backend trails the head; at most this many
    # extra calls in one batch (provider batch caps start at 100). 0 turns the check off (an
    # RPC without EIP-234 getLogs by blockHash); the backup re-scan then remains.
    indexer_bloom_window: int = Field(default=64, ge=0, le=1000)
    # Polls in a row without progress (no range accepted, head not confirmed: stale or
    # inconsistent answers, a wrong chain, a halt) before /healthz reports unhealthy. 20 polls
    # take ~70 s with the stale back-off and span ~7 failovers, far past a routine hiccup.
    indexer_unhealthy_after_polls: int = Field(default=20, ge=1, le=1_000_000)
