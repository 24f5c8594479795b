"""The indexer: moves HoldAI_ReasoningRequested / HoldAI_ReasoningFulfilled events from the
chain into the state store, never missing one, never storing one twice, surviving crashes,
stale RPC backends and reorgs (guarantees in workers/indexer/scanner.py)."""
