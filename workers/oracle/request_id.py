"""How a uint256 request id is stored in SQLite and split into shards.

SQLite's INTEGER is a signed 64-bit number, so a uint256 does not fit. We store the id as
its canonical decimal text (no sign, no leading zeros) in ``requests.request_id``: exact,
readable in the ``sqlite3`` CLI, and ``WHERE request_id = 42`` still matches because the
column's TEXT affinity converts the literal.

Sharding needs ``request_id % worker_count`` inside SQL. We store ``shard_key = request_id
mod SHARD_MODULUS`` where SHARD_MODULUS = lcm(1..42), the largest such lcm below 2**63.
Because every worker count N in 1..42 divides SHARD_MODULUS, ``shard_key % N ==
request_id % N`` exactly, for every uint256. That caps HODLAI_WORKER_COUNT at 42.
"""

from __future__ import annotations

import math
from functools import reduce

from shared.errors import InvalidRequestError

UINT256_MAX = 2**256 - 1
MAX_WORKER_COUNT = 42
SHARD_MODULUS = reduce(math.lcm, range(1, MAX_WORKER_COUNT + 1))
assert SHARD_MODULUS < 2**63  # the design depends on it; checked at import


def encode(request_id: int) -> str:
    """The stored form of a request id."""
    if not 0 <= request_id <= UINT256_MAX:
        raise InvalidRequestError(f"request id out of uint256 range: {request_id}")
    return str(request_id)


def decode(stored: str) -> int:
    """Parse a stored (or operator-typed) request id."""
    text = stored.strip()
    # isdigit() alone accepts superscripts and other scripts' digits, which int() refuses.
    if not (text.isascii() and text.isdigit()):
        raise InvalidRequestError(f"request id is not a non-negative decimal integer: {stored!r}")
    value = int(text)
    if value > UINT256_MAX:
        raise InvalidRequestError(f"request id out of uint256 range: {stored!r}")
    return value


def shard_key(request_id: int) -> int:
    """The SQLite-sized key whose residue mod any worker count equals the id's."""
    return request_id % SHARD_MODULUS


def shard_of(request_id: int, worker_count: int) -> int:
    if not 1 <= worker_count <= MAX_WORKER_COUNT:
        raise ValueError(f"worker_count must be 1..{MAX_WORKER_COUNT}, got {worker_count}")
    return request_id % worker_count
