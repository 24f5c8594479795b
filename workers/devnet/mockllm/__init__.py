"""``hodlai mock-llm``: a deterministic OpenAI-compatible chat server that misbehaves on
request, for tests, the demo and benchmarks."""
