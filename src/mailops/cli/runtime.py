"""What one run of the command line shares: the global options, the clock, the config, the open stores.

Commands call :func:`now` through this module (``runtime.now()``) so that a test
can move the clock for every command at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from ..config import Config
    from ..reader import Reader
    from ..store import Store

#: Bounds of numeric options, so that no number reaches the database (64-bit integers) or a clock out of range.
MAX_ID = 2**63 - 1  # message ids are 64-bit integers
MAX_ROWS = 10_000_000  # --limit, --preview
MAX_SECONDS = 7 * 86400.0  # deliver --max-seconds


class _State:
    config_path: str | None = None
    timezone: ZoneInfo | None = None  # the loaded config's: --json writes times in it
    debug: bool = False
    sendmail: bool = False  # running `mailops sendmail`: errors exit with sysexits.h codes


STATE = _State()


def now() -> float:
    """The current time (seconds since the epoch)."""
    return time.time()


def load_config() -> Config:
    """The senders.yaml chosen by ``--config`` (or the default search), loaded and checked."""
    from ..config import load_config as load

    config = load(STATE.config_path)
    STATE.timezone = config.timezone
    return config


OPEN_STORES: list[Store] = []


def open_store(config: Config) -> Store:
    """The configured database, created or migrated as needed; closed when the run ends."""
    from ..store import Store

    store = Store.open(config.database_url)
    OPEN_STORES.append(store)  # closed by main(): a server database should not keep idle connections
    return store


def close_stores() -> None:
    """Close every store this run opened."""
    while OPEN_STORES:
        OPEN_STORES.pop().close()


@contextmanager
def reading(config: Config) -> Iterator[Reader]:
    """A reader for ``log`` and ``stats``: a light connection of its own (no SQLAlchemy) when the schema is
    current, else a read transaction of the Store, which first creates or migrates the database."""
    from ..reader import Reader, open_reader

    reader = open_reader(config.database_url)
    if reader is None:
        with open_store(config).read() as conn:
            yield Reader.over(conn)
        return
    try:
        yield reader
    finally:
        reader.close()
