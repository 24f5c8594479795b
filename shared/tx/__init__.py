"""The transaction sender every executor shares: local signing, fees, nonces, a ledger of
signed transactions recorded before broadcast, and a manager that pipelines, confirms,
re-broadcasts, bumps and cancels them. Nothing here knows what a transaction is *for*; that
is a :class:`~shared.tx.settlement.PurposeHandler` registered by the executor.
"""
