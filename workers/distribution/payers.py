"""A payer pays the runs of its networks (issue 21 §4, §5). The distributor builds one per
configured network and calls ``tick`` in its loop; many distributors (and many payers) may run
on one database.

Guarantees an implementation gives:

- it works on a run only under a lease (``shared.state.claim`` on
  ``workers.distribution.machine.RUNS``), so two payers never work on one run at once, and a
  run whose payer died is taken over when its lease expires;
- every status change of a run or transfer goes through shared.state with its audit row;
- a transfer row is ``sent`` (with what identifies its transaction) before the transaction
  can reach the network, ``paid`` only at FINAL on chain; an unknown outcome is resolved from
  the chain, never by paying again;
- a shortfall (balance, gas, allowance) pauses the run with the reason, and the run resumes
  when it is met; it does not fail the run;
- a run is ``completed`` when every transfer is final and at least one was paid, ``failed``
  (with the reason) otherwise.

Factories (called by the distributor, workers/distribution/main.py):
``workers.distribution.evm.payer.build(settings, chain_name, *, db)`` and
``workers.distribution.solana.build_payer(settings, *, db)``, ``db`` the process's
shared.db.AsyncDatabase; either may return an awaitable.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Payer(Protocol):
    #: the network names (``distribution_runs.network``) whose runs it pays
    networks: frozenset[str]

    async def tick(self) -> bool:
        """One pass: claim in-flight runs of its networks and advance them. True if it did
        work (the distributor then ticks again at once)."""
        ...

    async def aclose(self) -> None:
        """Release leases, connections, the key."""
        ...
