"""The mint executor's migration set (entry point ``hodlai.migrations`` ``mint``): numbered
SQL files applied after the core's, recorded as set ``mint`` in ``schema_migrations``."""
