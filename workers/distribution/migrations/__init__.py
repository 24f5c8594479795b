"""The distribution executor's migration set (entry point ``hodlai.migrations``
``distribution``): numbered SQL files applied after the core's, recorded as set
``distribution`` in ``schema_migrations``."""
