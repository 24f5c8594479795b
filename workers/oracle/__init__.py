"""The oracle executor: vault requests answered by an LLM with one permitted action.

Its machine, store, contracts and decoders, migration set, settings, metrics, routes and
inspection commands are modules here; its processes are the subpackages ``indexer``
(chain -> PENDING), ``inference`` (PENDING -> ANSWERED), ``fulfiller`` (ANSWERED -> on
chain) and ``replay`` (re-running an answer to check it)."""
