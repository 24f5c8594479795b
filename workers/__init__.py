"""One package per executor (``oracle``, ``dispatch``; ``mint`` and ``distribution`` to come)
and one for development tools (``devnet``). An executor's long-running processes are its
subpackages (the oracle's ``indexer``, ``inference``, ``fulfiller``, ``replay``), each with a
``cli`` module whose ``register`` adds its subcommands to ``hodlai`` and a composition root
that builds its clients and runs its loop. The core (``shared``) imports nothing from here:
an executor declares what it adds through entry points (pyproject.toml)."""
