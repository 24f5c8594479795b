"""The oracle executor: vault requests answered by an LLM with one permitted action."""
