"""Claim leases can never send a message twice: a floor in config, renewal while in flight, no self-reclaim."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.fixtures_cli import popen_mailops, run_mailops

PASSWORD = "s3cret-pass"


@pytest.fixture
def srv(smtp_server):
    return smtp_server(users={"sales@example.com": PASSWORD})


def _config(workspace, srv, lease):
    return workspace.write_config(
        {"sales": workspace.sender(srv, email="sales@example.com", password=PASSWORD)},
        routes={"default": "sales"},
        delivery={"lease": lease},
    )


def _slow(seconds: float):
    """A DATA hook that holds the server (all its connections) for ``seconds``, then accepts."""

    def hook(_envelope):
        time.sleep(seconds)

    return hook


@pytest.mark.parametrize(
    ("lease", "why"),
    [
        (0, "a shorter lease could let another run send a message that is still being sent"),
        ("29s", "a shorter lease could let another run send a message that is still being sent"),
        ("2d", "a longer one holds a dead run's messages back for too long"),
    ],
)
def test_a_lease_outside_its_range_is_refused_with_the_reason(workspace, srv, cli, lease, why):
    path = _config(workspace, srv, lease)

    result = cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B")

    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"mailops: error: {path}: delivery.lease: must be between 30s and 1d (got {lease!r}); {why}"
    ]
    assert srv.messages == [] and not workspace.db_path.exists()


def test_the_floor_itself_is_accepted(workspace, srv, cli):
    _config(workspace, srv, "30s")
    assert cli("send", "--to", "a@example.org", "--subject", "S", "--body", "B").exit_code == 0
    assert len(srv.messages) == 1


def test_a_tiny_lease_and_a_slow_server_send_every_message_once(workspace, srv, cli, lease_floor):
    # Far more messages than one claim takes, each taking longer with the server than the whole lease:
    # the dispatcher claims again while its earlier claims have long expired. It must not take them back.
    lease_floor(0.001)
    _config(workspace, srv, 0.001)
    total = 120
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(total)])
    assert cli("send", "--data", data, "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    srv.data_hook = _slow(0.02)

    result = cli("deliver")

    assert result.exit_code == 0, result.output
    received = Counter(m.rcpt_tos[0] for m in srv.messages)
    assert received == Counter({f"u{i}@example.org": 1 for i in range(total)})
    assert workspace.states() == {"sent": total}


@pytest.mark.slow
def test_parallel_deliver_runs_with_a_short_lease_send_every_message_once(workspace, srv, cli, lease_floor):
    # Each run's messages stay with the slow server for several leases: only renewal keeps them from
    # the other runs, which start together and then keep coming while the first ones are still sending.
    lease = 2.0
    lease_floor(lease)
    _config(workspace, srv, lease)
    total = 160
    data = workspace.csv("c.csv", [{"email": f"u{i}@example.org"} for i in range(total)])
    assert cli("send", "--data", data, "--subject", "S", "--body", "B", "--queue-only").exit_code == 0
    srv.data_hook = _slow(0.04)  # ~6.4 s of server time for all of them, about three leases

    runs = [popen_mailops("deliver", "-q") for _ in range(4)]
    for _ in range(8):  # bounded: late runs while the first ones are still sending
        if all(run.poll() is not None for run in runs):
            break
        time.sleep(lease * 0.75)
        runs.append(popen_mailops("deliver", "-q"))
    outputs = [run.communicate(timeout=120) for run in runs]

    assert [run.returncode for run in runs] == [0] * len(runs), outputs
    received = Counter(m.rcpt_tos[0] for m in srv.messages)
    assert {r: n for r, n in received.items() if n > 1} == {}
    assert set(received) == {f"u{i}@example.org" for i in range(total)}
    assert workspace.states() == {"sent": total}
    assert run_mailops("deliver").exit_code == 0 and len(srv.messages) == total
