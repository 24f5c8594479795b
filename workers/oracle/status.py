"""The oracle's part of ``hodlai status`` (shared/status.py): its processes, its poller (the
indexer, on ``HODLAI_RPC_URLS``), the request figures of :func:`collect_status`, and its
problems: the indexer's halt and reorgs deeper than the confirmations.

Its figures are also kept at the top level of ``hodlai status --json``, where scripts found
them before the node had more than one executor."""

from __future__ import annotations

from collections.abc import Sequence

from shared.config import CoreSettings
from shared.status import ExecutorReport, PollerChain, StatusContext, StatusProvider
from workers.oracle.inspect import collect_status

EXECUTOR = "oracle"
# The indexer's cursor and halt name (workers/oracle/indexer/reorg.py CURSOR_NAME).
POLLER = "indexer"


def _pollers(settings: CoreSettings) -> Sequence[PollerChain]:
    return [PollerChain(POLLER, settings.rpc_urls)]


def report(ctx: StatusContext) -> ExecutorReport:
    info = collect_status(ctx.conn, ctx.heads.get(POLLER), ctx.now)
    problems = []
    if info["indexer_halted"] is not None:
        problems.append(
            f"the indexer is halted: {info['indexer_halted']} (see docs/OPERATIONS.md, then: "
            "hodlai indexer-resume); the fulfiller signs nothing meanwhile"
        )
    if info["deep_reorgs"]:
        problems.append(
            f"{info['deep_reorgs']} reorg(s) deeper than HODLAI_CONFIRMATIONS were seen; see "
            "docs/OPERATIONS.md"
        )
    age = info["oldest_pending_age_s"]
    lines = [
        f"chain         {info['chain_id']}  provider {info['provider']}",
        f"oldest pending {'-' if age is None else f'{age} s'}",
        f"reorgs        {info['reorgs']} ({info['deep_reorgs']} deeper than confirmations)",
    ]
    fields = {k: v for k, v in info.items() if k != "counts"}
    return ExecutorReport(fields=fields, lines=lines, problems=problems, top_level=info)


STATUS = StatusProvider(
    executor=EXECUTOR, report=report, roles=("indexer", "fulfiller"), pollers=_pollers
)
