"""The AI mint executor (issue 20, seeds 000 and 001): chat → task → EIP-3009 funding →
batched x402 mints, every mint paid exactly once."""
