"""The oracle executor: answers HoldAI reasoning requests on chain (its API routes live here)."""
