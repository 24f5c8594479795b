"""The EVM rail of the distribution executor: ERC-20 distributions on the node's named
chains (``network.py``: the Network, with the reads of ``reads.py``; ``payer.py``: the
Payer through the multisend contract and the core sending service)."""
