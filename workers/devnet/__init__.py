"""Development tools, no executor: ``hodlai devnet`` (anvil + deployed contracts + settings),
``hodlai deploy`` (the same deployment against any JSON-RPC endpoint), the anvil wrapper the
tests and benchmarks start chains with, and ``hodlai mock-llm``."""
