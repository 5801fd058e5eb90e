"""Group commit: the writes of several threads in one transaction, and one failing write isolated."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from mailops import tables
from mailops.groupcommit import GroupCommit
from mailops.store import Store


def _insert_events(conn, writes: list[str]) -> list[int]:
    out = []
    for detail in writes:
        if detail == "bad":
            raise ValueError("this write is broken")
        out.append(
            conn.execute(sa.insert(tables.Event).values(at=0.0, kind="t", detail=detail)).inserted_primary_key[0]
        )
    return out


def _details(store: Store) -> list[str]:
    with store.read() as conn:
        return sorted(conn.execute(sa.select(tables.Event.c.detail)).scalars())


def _wait_until(condition) -> None:
    for _ in range(2000):  # bounded: the other threads only have to reach a lock
        if condition():
            return
        time.sleep(0.005)
    raise AssertionError("the other threads never queued their writes")


@pytest.fixture
def store(tmp_path: Path):
    store = Store.open(f"sqlite:///{tmp_path / 'g.db'}")
    yield store
    store.close()


def _run_group(store: Store, details: list[str]) -> tuple[GroupCommit[str, int], dict[str, object]]:
    """The first write's transaction waits until every other thread has queued its write; those go together."""
    release = threading.Event()
    first_group = threading.Event()

    def apply(conn, writes: list[str]) -> list[int]:
        if not first_group.is_set():
            first_group.set()
            assert release.wait(30)
        return _insert_events(conn, writes)

    writer: GroupCommit[str, int] = GroupCommit(store, apply)
    outcomes: dict[str, object] = {}

    def commit(detail: str) -> None:
        try:
            outcomes[detail] = writer.commit(detail)
        except ValueError as exc:
            outcomes[detail] = exc

    leader = threading.Thread(target=commit, args=("lead",))
    leader.start()
    assert first_group.wait(30)
    others = [threading.Thread(target=commit, args=(d,)) for d in details]
    for thread in others:
        thread.start()
    _wait_until(lambda: len(writer._waiting) == len(details))
    release.set()
    for thread in [leader, *others]:
        thread.join(30)
    return writer, outcomes


def test_writes_that_arrive_during_a_transaction_are_committed_together_in_the_next(store: Store) -> None:
    writer, outcomes = _run_group(store, ["a", "b", "c", "d"])

    assert (writer.groups, writer.writes) == (2, 5)  # the leader's alone, then the four waiting ones in one
    assert _details(store) == ["a", "b", "c", "d", "lead"]
    assert sorted(outcomes.values()) == [1, 2, 3, 4, 5]  # every thread got its own write's result


def test_one_failing_write_fails_alone_and_the_others_of_its_group_are_committed(store: Store) -> None:
    writer, outcomes = _run_group(store, ["a", "bad", "c"])

    assert (writer.groups, writer.writes) == (3, 3)  # the leader's, then "a" and "c" each alone
    assert isinstance(outcomes["bad"], ValueError)
    assert _details(store) == ["a", "c", "lead"]
    assert all(isinstance(outcomes[d], int) for d in ("a", "c", "lead"))
