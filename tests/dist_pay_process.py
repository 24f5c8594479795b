"""A distributor's EVM payer as its own process, for the SIGKILL tests: pays the ``devnet``
network's runs (settings from the environment, HODLAI_…) until killed.

Usage: python -m tests.dist_pay_process
"""

from __future__ import annotations

import asyncio

from shared.db import AsyncDatabase, connect
from shared.logs import configure_logging
from workers.distribution.evm.payer import build
from workers.distribution.evm.settings import EvmPaySettings


async def main() -> None:
    settings = EvmPaySettings()
    configure_logging(settings.log_level)
    db = AsyncDatabase(connect(settings.db_path, durable=True))
    payer = build(settings, "devnet", db=db)
    try:
        while True:
            if not await payer.tick():
                await asyncio.sleep(0.1)
    finally:
        await payer.aclose()


if __name__ == "__main__":
    asyncio.run(main())
