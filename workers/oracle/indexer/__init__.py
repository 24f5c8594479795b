"""The indexer: the oracle's log poller (shared/chain/poller.py) with the oracle's sink, which
moves HoldAI_ReasoningRequested / HoldAI_ReasoningFulfilled events from the chain into the
state store, never missing one, never storing one twice, surviving crashes, stale RPC
backends and reorgs."""
