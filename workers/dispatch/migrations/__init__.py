"""The dispatcher's migration set (entry point ``hodlai.migrations`` ``dispatch``): numbered
SQL files applied after the core's, recorded as set ``dispatch`` in ``schema_migrations``."""
