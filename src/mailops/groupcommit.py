"""Group commit: the writes several threads have ready go into one database transaction.

Each delivery worker writes after every message (the previous message's
outcome, the next message's quota reservation). One transaction per write
costs a ``BEGIN IMMEDIATE`` and a commit each (on PostgreSQL, round trips),
and on SQLite every worker queues for the one writer anyway. Here a thread
hands its write to :meth:`GroupCommit.commit` and waits until it is
committed. A thread that finds no transaction under way becomes the leader:
it takes every write waiting at that moment, its own included, and commits
them together; writes that arrive meanwhile wait and go together in the next
transaction, written by one of their own threads. Nobody sleeps to gather a
larger group: a write waits at most for the transaction under way and then
its own, a few milliseconds, and the caller knows its write is durable when
``commit`` returns.

One write that fails (a bug, a constraint) must not fail the others: when a
group's transaction raises anything but a failure of the database itself,
every write of the group is tried again alone, and only the one that fails
again reports its error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from sqlalchemy.engine import Connection

from .errors import StoreError
from .store import KeptConnection, Store

W = TypeVar("W")  # what a thread hands over
R = TypeVar("R")  # what its write gives back once committed


class _Slot(Generic[W, R]):
    """One thread's write, and the lock it sleeps on until the write is done or it is to lead a group."""

    __slots__ = ("done", "error", "result", "wake", "write")

    def __init__(self, write: W) -> None:
        self.write = write
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None
        self.wake = threading.Lock()  # held until the thread is to wake: cheaper than an Event
        self.wake.acquire()


class GroupCommit(Generic[W, R]):
    """Commits the writes of several threads together; ``apply(conn, writes)`` writes a group in order and
    returns one result per write (it may run again on the same writes when a group has to be split)."""

    def __init__(self, store: Store, apply: Callable[[Connection, list[W]], list[R]]) -> None:
        self.store = store
        self.apply = apply
        self._lock = threading.Lock()
        self._waiting: list[_Slot[W, R]] = []
        self._busy = False  # a leader is writing (or about to): newcomers wait for it
        # One connection kept for the groups (only the leader uses it): no pool checkout and, on PostgreSQL,
        # no ping round trip per transaction.
        self._kept = KeptConnection(store)
        self.groups = 0  # transactions committed (for tests and the benchmark's notes)
        self.writes = 0  # writes they carried

    def commit(self, write: W) -> R:
        """Write ``write`` with whatever else is waiting; returns its result once committed, or raises its error."""
        slot: _Slot[W, R] = _Slot(write)
        with self._lock:
            self._waiting.append(slot)
            lead, self._busy = not self._busy, True
        if not lead:
            # Woken once its group is written, or to lead the next group; only this thread wakes (no herd).
            slot.wake.acquire()
        if not slot.done:
            self._lead()
        if slot.error is not None:
            raise slot.error
        return cast(R, slot.result)  # set for every slot that has no error

    def _lead(self) -> None:
        """Write everything waiting as one group, wake its threads, and hand the lead to the first newcomer."""
        with self._lock:
            group, self._waiting = self._waiting, []
        try:
            self._write(group)
        except BaseException as exc:
            for other in group:  # never leave a thread waiting for a write nobody will make
                if not other.done:
                    other.error, other.done = exc, True
            raise
        finally:
            for other in group:
                if other.wake.locked():
                    other.wake.release()
            with self._lock:
                if self._waiting:
                    self._waiting[0].wake.release()  # it leads the next group; _busy stays set
                else:
                    self._busy = False

    def _write(self, group: list[_Slot[W, R]]) -> None:
        """Commit ``group`` in one transaction (each write alone if that fails); every slot ends done."""
        try:
            results = self._transaction([slot.write for slot in group])
        except Exception as exc:  # noqa: BLE001 - reported to the threads whose writes these are
            if len(group) == 1 or isinstance(exc, StoreError):
                # The database itself failed (locked, gone): each write alone would meet the same wait.
                for slot in group:
                    slot.error, slot.done = exc, True
                return
            for slot in group:
                try:
                    slot.result = self._transaction([slot.write])[0]
                    self.groups += 1
                    self.writes += 1
                except Exception as alone:  # noqa: BLE001 - this write's own error, for its thread
                    slot.error = alone
                slot.done = True
            return
        for slot, result in zip(group, results, strict=True):
            slot.result, slot.done = result, True
        self.groups += 1
        self.writes += len(group)

    def _transaction(self, writes: list[W]) -> list[R]:
        with self._kept.write() as conn:
            return self.apply(conn, writes)

    def close(self) -> None:
        """Give the kept connection back (the end of a run); a later write takes a new one."""
        with self._lock:
            if not self._busy:
                self._kept.close()
