"""``hodlai inference``: the sharded, leased, concurrent LLM answering workers."""
