"""Dependencies routes share: the database connection of one request.

Each request opens its own connection (``shared.db.connect``: WAL, busy timeout) and closes
it when the response is done. Routes are plain ``def`` functions, so FastAPI runs them (and
this dependency) on its worker threads: a busy wait on the SQLite lock never blocks the
event loop, and no connection is shared between two requests.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request

from shared.db import connect


def open_database(request: Request) -> Iterator[sqlite3.Connection]:
    conn = connect(request.app.state.settings.db_path)
    try:
        yield conn
    finally:
        conn.close()


Database = Annotated[sqlite3.Connection, Depends(open_database)]
