"""The agent job dispatcher (seed 004): jobs from a remote queue go to the best few agents at
once; the first valid result wins and reaches the queue exactly once."""
