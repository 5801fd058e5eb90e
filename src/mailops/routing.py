"""Routes to ordered sender candidates: failover by priority or a pool balanced by strategy."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import health, quota, tables
from .config import Config, Sender
from .errors import UsageError
from .store import upsert_insert
from .wording import term

ROUTE_STATE = tables.RouteState
DEFAULT_ROUTE = "default"


@dataclass(frozen=True)
class Plan:
    """Where a message may go: the route's name, its candidate sender keys in static order, the strategy."""

    route: str | None
    candidates: tuple[str, ...]
    strategy: str

    @property
    def nominal(self) -> str:
        """The sender a message is rendered for (the first candidate); failover rewrites From later."""
        return self.candidates[0]


@dataclass(frozen=True)
class Skip:
    """A candidate passed over, and why (recorded with the attempt)."""

    sender: str
    reason: str


def resolve(config: Config, route: str | None, sender: str | None) -> Plan:
    """The plan for ``--route``/``--sender`` (or the ``default`` route); UsageError for unknown names."""
    if route and sender:
        raise UsageError(f"{term('--route')} and {term('--sender')} exclude each other; pass one of them")
    if sender:
        if sender not in config.senders:
            raise UsageError(
                f"{term('--sender')} {sender!r}: no such sender in {config.path}; "
                f"known senders: {', '.join(config.senders)}"
            )
        return Plan(route=None, candidates=(sender,), strategy="failover")
    name = route or DEFAULT_ROUTE
    if name not in config.routes:
        if route is None:
            raise UsageError(
                f"no {term('--route')} or {term('--sender')} given and {config.path} has no 'default' route; "
                f"pass {term('--route NAME')}, {term('--sender NAME')}, or add a 'default' route"
            )
        known = ", ".join(config.routes) or "(none)"
        raise UsageError(f"{term('--route')} {route!r}: no such route in {config.path}; known routes: {known}")
    spec = config.routes[name]
    keys = list(spec.senders)
    if spec.strategy == "failover":
        # Stable sort: equal priorities keep the order written in the route.
        keys.sort(key=lambda k: config.senders[k].priority)
    return Plan(route=name, candidates=tuple(keys), strategy=spec.strategy)


_TURNS: dict[str, Any] = {}


def turns_statement(dialect: str) -> Any:
    """The statement that takes ``b_count`` turns of the route ``b_route`` and returns its counter after them:
    an upsert (a route's first turns create its row), built once per dialect (SQLite and PostgreSQL)."""
    stmt = _TURNS.get(dialect)
    if stmt is None:
        values = upsert_insert(dialect, ROUTE_STATE)
        values = values.values(route=sa.bindparam("b_route"), counter=sa.bindparam("b_count"))
        stmt = _TURNS[dialect] = values.on_conflict_do_update(
            index_elements=[ROUTE_STATE.c.route], set_={"counter": ROUTE_STATE.c.counter + values.excluded.counter}
        ).returning(ROUTE_STATE.c.counter)
    return stmt


def take_turns(conn: Connection, route_key: str, count: int) -> int:
    """Reserve ``count`` consecutive round-robin turns of a route in one statement; returns the first.

    One write per claimed chunk instead of one per message; turns stay shared by every process.
    """
    last: int = conn.execute(turns_statement(conn.dialect.name), {"b_route": route_key, "b_count": count}).scalar_one()
    return last - count


def turn_key(route: str | None, candidates: list[str]) -> str:
    """The shared counter a round-robin message advances (its route, or its sender list without one)."""
    return route or "+".join(candidates)


def order(
    conn: Connection | None,
    config: Config,
    route: str | None,
    candidates: list[str],
    strategy: str,
    now: float,
    healths: dict[str, health.Health],
    has_password: dict[str, bool | str],
    rng: random.Random | None = None,
    turn: int | None = None,
) -> tuple[list[Sender], list[Skip]]:
    """Candidates to try, in order, and the ones skipped with a reason.

    ``conn`` (a write transaction) is needed only by round-robin (the shared
    turn counter, unless ``turn`` was taken beforehand with :func:`take_turns`) and
    least-used (current usage); other strategies pass None.
    """
    keys = list(candidates)
    if strategy == "round-robin" and len(keys) > 1:
        if turn is None:
            assert conn is not None
            turn = take_turns(conn, turn_key(route, keys), 1)
        shift = turn % len(keys)
        keys = keys[shift:] + keys[:shift]
    elif strategy == "random":
        (rng or random).shuffle(keys)
    elif strategy == "least-used":
        assert conn is not None
        known = [k for k in keys if k in config.senders]
        used = quota.usage(conn, known, config.timezone, now)
        keys.sort(
            key=lambda k: (
                (-quota.headroom(config.senders[k], used[k]), config.senders[k].priority)
                if k in config.senders
                else (0, 0)
            )
        )
    chosen: list[Sender] = []
    skipped: list[Skip] = []
    for key in keys:
        sender = config.senders.get(key)
        if sender is None:
            skipped.append(Skip(key, "no longer in senders.yaml"))
        elif not sender.active:
            skipped.append(Skip(key, "inactive (active: false)"))
        elif has_password.get(key, True) is not True:
            # the lookup's own reason when known (a password_command that timed out is not a missing password)
            why = has_password[key]
            skipped.append(
                Skip(key, why if isinstance(why, str) else f"no password (run 'mailops password set {key}')")
            )
        elif health.is_cooling_down(healths.get(key), now, health.settings_of(sender)):
            skipped.append(Skip(key, f"unhealthy: {healths[key].last_error or 'last attempt failed'}"))
        else:
            chosen.append(sender)
    return chosen, skipped
