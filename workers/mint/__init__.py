"""The AI mint executor (issue 20; seeds 000 and 001, the "AI Agent" token mint).

A user asks the chat for N mints of a token; a task is created with an agent wallet (derived
in the core vault) and a total cost in USDC; the user funds the wallet with an EIP-3009
``TransferWithAuthorization`` that the relayer key submits; the executor then buys the mints
one x402 purchase at a time from a token-mint server (``hodlai mint-server``), each paid by
an EIP-3009 authorization the agent wallet signs through the core's authorization ledger.

Packages and modules:

- :mod:`workers.mint.keyfile`: the seed's ``private.key`` (relayer, minter, agent master key).
- :mod:`workers.mint.server`: ``hodlai mint-server``, the x402 token-mint server with a local
  facilitator that settles through the core's sending service, idempotent per payment.
- :mod:`workers.mint.devnet`: the ``mint`` part of ``hodlai devnet``.

The executor (this stream): :mod:`.settings`, :mod:`.machine` and the migration set ``mint``,
:mod:`.store` (tasks, payments, transfers, the money account), :mod:`.funding` (the fund
route's checks, the relayer's submissions), :mod:`.buyer` (one x402 purchase through the
authorization ledger), :mod:`.executor` (``hodlai mint-executor``), :mod:`.routes`,
:mod:`.cli`, :mod:`.status`.
"""
