"""The mint server's migration set (entry point ``hodlai.migrations`` ``mint_server``): numbered
SQL files applied after the core's, recorded as set ``mint_server`` in ``schema_migrations``."""
