"""Token distribution automation (seed 003, issue 21): scheduled, conditional and manual
distributions of an ERC-20 or SPL token that pay every recipient exactly once.

The frame (this package's top level) is rail-agnostic: tasks, runs and per-recipient
transfers (machine.py, migrations/), amounts and manifests, the scheduler, the API and the
CLI. A rail (``evm/``, ``solana/``) implements :class:`networks.Network` and
:class:`payers.Payer`; the distributor runs one payer per configured network.
"""
