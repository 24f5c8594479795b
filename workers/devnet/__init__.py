"""The local development chain: ``hodlai devnet`` (anvil + deployed contracts + settings) and
``hodlai deploy`` (the same deployment against any JSON-RPC endpoint)."""
