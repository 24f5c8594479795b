"""``hodlai fulfiller``: the only process that signs with the oracle key. It turns ANSWERED
requests into ``fulfillNodeReasoning`` transactions through the shared transaction manager
(shared/tx) and follows them until the chain has settled each one."""
