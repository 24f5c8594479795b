"""One package per long-running process (indexer, inference, fulfiller) and per tool
(devnet, mock LLM). Each has a ``cli`` module whose ``register`` adds its subcommands to
``hodlai`` and a composition root that builds its clients and runs its loop."""
