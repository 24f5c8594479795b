"""hodlai core: the pieces every process of the oracle node shares.

Config, logging, the SQLite state store, the JSON-RPC chain client, the error hierarchy and
the command line. A new executor is a new module under ``workers/`` plus a table; it reuses
everything here instead of copying it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hodlai")
except PackageNotFoundError:  # running from a checkout that was never pip-installed
    __version__ = "0.0.0+unknown"
