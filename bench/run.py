"""mailops benchmark: prints msgs/s, ratios, peak memory and start-up times.

    python3 tasks.py bench                 # everything, default sizes
    python3 tasks.py bench --rows 2000 --only send
    python3 tasks.py bench --only targets --rounds 5   # the interleaved runs the targets compare

Everything runs on 127.0.0.1: a sink process (bench/sink.py: aiosmtpd with
STARTTLS + AUTH, optional per-message delay) and the clients being measured.
Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import json
import os
import shutil
import smtplib
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import make_msgid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PY = sys.executable
ENV = {
    **os.environ,
    "NO_COLOR": "1",
    "MAILOPS_PASSWORD_S0": "x",
    "MAILOPS_PASSWORD_S1": "x",
    "MAILOPS_PASSWORD_S2": "x",
    "MAILOPS_PASSWORD_S3": "x",
}


def scratch(prefix: str) -> Path:
    """A temporary folder removed when the benchmark exits (the log run alone writes a 240 MB database)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu(pid: int, reaped_children: bool = False) -> float | None:
    """CPU seconds (user + system) process ``pid`` has used, with those of its children it has reaped when
    ``reaped_children``; None where /proc is not readable (not Linux, or the process is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> float | None:
    """CPU seconds of process ``root`` and every child of it, living or reaped (a PostgreSQL server: the
    postmaster reaps each backend when its connection closes)."""
    total = process_cpu(root, reaped_children=True)
    if total is None:
        return None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == root:
            total += process_cpu(pid) or 0.0
    return total


@contextmanager
def sink(delay_ms: float) -> Iterator[dict[str, Any]]:
    """Start bench/sink.py in its own process; yields {"port", "ca_file"}, and adds "received" (the
    number of messages it accepted) once it has stopped."""
    folder = scratch("mailops-sink-")
    ready = folder / "ready.json"
    port = free_port()
    proc = subprocess.Popen(
        [
            PY,
            str(HERE / "sink.py"),
            "--port",
            str(port),
            "--delay-ms",
            str(delay_ms),
            "--ready-file",
            str(ready),
            "--count-file",
            str(folder / "count"),
        ]
    )
    info: dict[str, Any] = {}
    try:
        for _ in range(200):  # bounded wait for the sink to listen
            if ready.exists() and ready.read_text():
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("sink did not start")
        info.update(json.loads(ready.read_text()))
        info["cpu"] = lambda: process_cpu(proc.pid)  # the sink's CPU seconds so far (None: unknown)
        yield info
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        count_file = folder / "count"
        if count_file.exists():
            info["received"] = int(count_file.read_text())


def rows(n: int) -> list[dict[str, str]]:
    return [
        {"email": f"customer{i}@example.org", "name": f"Customer {i}", "plan": "Pro", "date": "2026-12-01"}
        for i in range(n)
    ]


def write_csv(path: Path, n: int) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["email", "name", "plan", "date"])
        writer.writeheader()
        for i in range(n):
            writer.writerow(
                {"email": f"customer{i}@example.org", "name": f"Customer {i}", "plan": "Pro", "date": "2026-12-01"}
            )
    return path


def build(row: dict[str, str], i: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Sales <s0@example.com>"
    msg["To"] = f"{row['name']} <{row['email']}>"
    msg["Subject"] = f"Your {row['plan']} plan renews on {row['date']}"
    msg["Message-ID"] = make_msgid(domain="example.com")
    msg.set_content(f"Hello {row['name']},\nyour {row['plan']} plan renews on {row['date']}.\n")
    return msg


def smtp_client(info: dict[str, Any]) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", info["port"], timeout=30)
    client.starttls(context=ssl.create_default_context(cafile=info["ca_file"]))
    client.login("s0@example.com", "x")
    return client


def loop_reuse(info: dict[str, Any], data: list[dict[str, str]]) -> float:
    """Plain smtplib, one connection, an EmailMessage built per row: the ceiling."""
    start = time.perf_counter()
    client = smtp_client(info)
    for i, row in enumerate(data):
        client.send_message(build(row, i), from_addr="s0@example.com", to_addrs=[row["email"]])
    client.quit()
    return time.perf_counter() - start


def loop_reconnect(info: dict[str, Any], data: list[dict[str, str]]) -> float:
    """Plain smtplib reconnecting and logging in per message (what mailmerge/yagmail do)."""
    start = time.perf_counter()
    for i, row in enumerate(data):
        client = smtp_client(info)
        client.send_message(build(row, i), from_addr="s0@example.com", to_addrs=[row["email"]])
        client.quit()
    return time.perf_counter() - start


def threaded_reuse(info: dict[str, Any], data: list[dict[str, str]], threads: int) -> float:
    """``threads`` plain smtplib loops in parallel, one connection each: what this machine and sink allow."""
    import threading

    chunks = [data[i::threads] for i in range(threads)]
    start = time.perf_counter()
    workers = [threading.Thread(target=loop_reuse, args=(info, chunk)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


MAILMERGE_VERSION = "2.3.0"
MAILMERGE_VENV = HERE / ".venv-mailmerge"


def mailmerge_command() -> tuple[Path | None, str]:
    """The mailmerge executable (installed on first use into bench/.venv-mailmerge), or None and why not."""
    exe = MAILMERGE_VENV / "bin" / "mailmerge"
    if not exe.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", str(MAILMERGE_VENV)], check=True, timeout=300)
            subprocess.run(
                [
                    str(MAILMERGE_VENV / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    f"mailmerge=={MAILMERGE_VERSION}",
                ],
                check=True,
                timeout=600,
                stdout=subprocess.DEVNULL,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            return None, f"could not install mailmerge {MAILMERGE_VERSION}: {exc}"
    return exe, ""


def loop_mailmerge(exe: Path, info: dict[str, Any], n: int) -> float:
    """mailmerge itself on the same rows: it reconnects, STARTTLS and logs in for every message."""
    folder = scratch("mailops-mailmerge-")
    write_csv(folder / "rows.csv", n)
    (folder / "template.txt").write_text(
        "TO: {{ name }} <{{ email }}>\nSUBJECT: Your {{ plan }} plan renews on {{ date }}\n"
        "FROM: Sales <s0@example.com>\n\nHello {{ name }},\nyour {{ plan }} plan renews on {{ date }}.\n"
    )
    (folder / "server.conf").write_text(
        f"[smtp_server]\nhost = 127.0.0.1\nport = {info['port']}\nsecurity = STARTTLS\nusername = s0@example.com\n"
    )
    start = time.perf_counter()
    # A new session has no controlling terminal, so mailmerge's getpass reads the password from stdin.
    proc = subprocess.run(
        [
            str(exe),
            "--no-dry-run",
            "--no-limit",
            "--output-format",
            "raw",
            "--template",
            "template.txt",
            "--database",
            "rows.csv",
            "--config",
            "server.conf",
        ],
        input="x\n",
        text=True,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        check=False,
        timeout=3600,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"mailmerge failed with {proc.returncode}: {proc.stderr[-500:]}")
    return seconds


def workdir(
    info: dict[str, Any], senders: int, connections: int, strategy: str = "round-robin", database: str = "bench.db"
) -> Path:
    folder = scratch("mailops-bench-")
    (folder / "templates" / "renewal").mkdir(parents=True)
    (folder / "templates" / "renewal" / "subject.txt").write_text("Your {{ plan }} plan renews on {{ date }}\n")
    (folder / "templates" / "renewal" / "body.txt").write_text(
        "Hello {{ name }},\nyour {{ plan }} plan renews on {{ date }}.\n"
    )
    names = [f"s{i}" for i in range(senders)]
    lines = [
        "timezone: UTC",
        f"database: {database}",
        "templates: templates",
        "defaults:",
        "  host: 127.0.0.1",
        f"  port: {info['port']}",
        "  security: starttls",
        f"  ca_file: {info['ca_file']}",
        f"  connections: {connections}",
        "  max_per_connection: 100000",
        "senders:",
    ]
    for name in names:
        lines += [f"  {name}:", f"    email: {name}@example.com"]
    lines += ["routes:", f"  default: {{senders: [{', '.join(names)}], strategy: {strategy}}}"]
    (folder / "senders.yaml").write_text("\n".join(lines) + "\n")
    return folder


def mailops(folder: Path, *args: str, src: str | None = None) -> tuple[float, subprocess.CompletedProcess[str], float]:
    """Run mailops in ``folder`` (from the source tree ``src`` when given); returns (wall seconds, process,
    CPU seconds it used: user + system, which a busy machine disturbs less than the wall time)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [PY, "-m", "mailops", "--config", str(folder / "senders.yaml"), *args],
        capture_output=True,
        text=True,
        env={**ENV, "PYTHONPATH": src} if src else ENV,
        cwd=folder,
        check=False,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def peak_rss(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run ``cmd``; (seconds, peak RSS in MiB, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=cwd)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _, _status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss // 1024, err


def aiosmtplib_clients(info: dict[str, Any], data: list[dict[str, str]], connections: int) -> float:
    """aiosmtplib, ``connections`` concurrent connections in one event loop, an EmailMessage built per row."""
    import asyncio

    import aiosmtplib

    context = ssl.create_default_context(cafile=info["ca_file"])

    async def one(chunk: list[tuple[int, dict[str, str]]]) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=info["port"], timeout=30, start_tls=False)
        await client.connect()
        await client.starttls(tls_context=context)
        await client.login("s0@example.com", "x")
        for i, row in chunk:
            await client.send_message(build(row, i), sender="s0@example.com", recipients=[row["email"]])
        await client.quit()

    async def all_of_them() -> None:
        numbered = list(enumerate(data))
        await asyncio.gather(*(one(numbered[k::connections]) for k in range(connections)))

    start = time.perf_counter()
    asyncio.run(all_of_them())
    return time.perf_counter() - start


def pg_server() -> tuple[Any, str]:
    """A throw-away PostgreSQL server (as tests/fixtures_pg.py starts it), or None and why not."""
    sys.path.insert(0, str(HERE.parent))
    try:
        import psycopg  # noqa: F401

        from tests.fixtures_pg import SERVER_USER, PgCluster, find_pg_bin
    except ImportError as exc:
        return None, f"cannot import the PostgreSQL helpers ({exc}); install the test extras"
    pg_bin = find_pg_bin()
    if pg_bin is None:
        return None, "no PostgreSQL server binaries (initdb, pg_ctl, postgres) under /usr/lib/postgresql or PG_BIN"
    import pwd

    # Not under a folder private to root: the server runs as the postgres user when we are root.
    root = Path(tempfile.mkdtemp(prefix="mailops-bench-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    cluster = PgCluster(bin=pg_bin, root=root, port=free_port())
    try:
        cluster.start()
    except (RuntimeError, subprocess.SubprocessError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        return None, f"could not start PostgreSQL: {str(exc)[:300]}"

    def stop() -> None:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    return cluster, ""


#: per mailops run label: (seconds from the command's start to its first SMTP transaction, msgs/s from then on)
PHASES: dict[str, tuple[float, float]] = {}


def _query(folder: Path, pg_url: str | None, sql: str) -> tuple[Any, ...]:
    """The one row ``sql`` returns from the run's store (the bench's SQLite file, or ``pg_url``)."""
    if pg_url is None:
        db = sqlite3.connect(folder / "bench.db")
        try:
            return tuple(db.execute(sql).fetchone())
        finally:
            db.close()
    import psycopg

    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        return tuple(conn.execute(sql).fetchone() or ())


def phases(folder: Path, pg_url: str | None, started: float, n: int) -> tuple[float, float]:
    """Where a run's time went, from its log: (seconds from ``started``, the wall clock when the command was
    launched, to the start of its first SMTP transaction; msgs/s from then to its last outcome)."""
    first, last = _query(folder, pg_url, "SELECT min(at - coalesce(duration, 0)), max(at) FROM attempts")
    return first - started, n / max(last - first, 1e-9)


def log_counts(folder: Path, pg_url: str | None) -> tuple[int, int]:
    """What the store says after a run: (attempts logged as sent, messages in state sent)."""
    logged, marked = _query(
        folder,
        pg_url,
        "SELECT (SELECT count(*) FROM attempts WHERE outcome = 'sent'), "
        "(SELECT count(*) FROM messages WHERE state = 'sent')",
    )
    return int(logged), int(marked)


#: CPU milliseconds per message of the last mailops run of each label
CPU_MS: dict[str, float] = {}
#: the same for the processes that served that run: {"sink": ..., "PostgreSQL": ...} (None: not measured)
OTHER_MS: dict[str, dict[str, float | None]] = {}


def _per_message(before: float | None, after: float | None, n: int) -> float | None:
    return None if before is None or after is None else 1000 * (after - before) / n


def cluster_cpu(cluster: Any) -> float | None:
    """CPU seconds the bench's PostgreSQL server (postmaster and backends) has used; None without one."""
    if cluster is None:
        return None
    try:
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return tree_cpu(postmaster)


LAST = [""]  # the label of the last run that recorded its CPU time


class Check:
    """Every run's "what the sink received equals what the client says it sent" (for mailops: its log)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.failed = 0

    def add(self, label: str, received: int | None, says: int, what: str) -> None:
        ok = received == says
        self.failed += not ok
        self.lines.append(f"  {'ok' if ok else 'MISMATCH'}  {label}: sink received {received}, {what} {says}")


def run_client(check: Check, label: str, delay_ms: float, n: int, client: Any) -> float:
    """Time ``client(info)`` against a fresh sink; returns msgs/s and checks the sink's count against ``n``."""
    import resource

    with sink(delay_ms) as info:
        before, sink_before = resource.getrusage(resource.RUSAGE_SELF), info["cpu"]()
        seconds = client(info)
        after, sink_after = resource.getrusage(resource.RUSAGE_SELF), info["cpu"]()
    CPU_MS[label] = 1000 * ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / n
    OTHER_MS[label] = {"sink": _per_message(sink_before, sink_after, n)}
    LAST[0] = label
    check.add(label, info.get("received"), n, "client sent")
    return n / seconds


def bench_send(
    check: Check,
    label: str,
    n: int,
    delay_ms: float,
    senders: int,
    connections: int,
    cluster: Any = None,
    src: str | None = None,
) -> float:
    """mailops send of ``n`` template rows (on SQLite, or on a fresh database of ``cluster``; from the source
    tree ``src`` when given); returns msgs/s."""
    pg_url = None
    if cluster is not None:
        pg_url = cluster.url(cluster.create_database())
    with sink(delay_ms) as info:
        folder = workdir(info, senders, connections, database=pg_url or "bench.db")
        data = write_csv(folder / "rows.csv", n)
        sink_before, pg_before = info["cpu"](), cluster_cpu(cluster)
        started = time.time()  # the log's clock
        seconds, proc, cpu = mailops(folder, "send", "--template", "renewal", "--data", str(data), "-q", src=src)
        sink_after, pg_after = info["cpu"](), cluster_cpu(cluster)
        CPU_MS[label] = 1000 * cpu / n
        OTHER_MS[label] = {
            "sink": _per_message(sink_before, sink_after, n),
            "PostgreSQL": _per_message(pg_before, pg_after, n),
        }
        LAST[0] = label
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            raise SystemExit(f"mailops send failed with {proc.returncode}")
    logged, marked = log_counts(folder, pg_url)
    PHASES[label] = phases(folder, pg_url, started, n)
    check.add(label, info.get("received"), logged, f"outbox says {marked} sent, log says")
    if marked != logged:
        check.failed += 1
        check.lines.append(f"  MISMATCH  {label}: outbox says {marked} sent, log {logged}")
    if pg_url is not None:
        cluster.drop_database(pg_url.rsplit("/", 1)[1])
    return n / seconds


def table(title: str, header: list[str], body: list[list[Any]]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    for line in [header, ["-" * w for w in widths], *body]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))


def section_send(n: int, with_mailmerge: bool, rounds: int, targets_only: bool, baseline_src: str | None) -> None:
    """Every client on the same ``n`` rows, at 0 ms and with a 20 ms per-message server delay.

    The runs the targets compare are repeated ``rounds`` times, interleaved (A B C A B C ...), and their
    median is printed with the ratio taken within each round (so a machine whose speed drifts moves both
    sides of a ratio alike). The slow baselines (reconnect loops, mailmerge, one connection at 20 ms) run
    once, in the first round, unless ``targets_only``. With ``baseline_src`` (another checkout's ``src``),
    each mailops run the targets compare is followed by the same run of that code, for a before/after table.
    """
    data = rows(n)
    check = Check()
    cluster, no_pg = pg_server()
    exe, why_not = (None, "skipped (--no-mailmerge)")
    if with_mailmerge and not targets_only:
        exe, why_not = mailmerge_command()
    load_before = os.getloadavg()
    rates: dict[str, list[float]] = {}

    #: per measured key: CPU ms/msg of the client, the sink and the PostgreSQL server, one entry per run
    spent: dict[str, dict[str, list[float]]] = {}

    def measure(key: str, rate: float) -> None:
        rates.setdefault(key, []).append(rate)
        parts = {"client": CPU_MS.get(LAST[0]), **OTHER_MS.get(LAST[0], {})}
        for who, ms in parts.items():
            if ms is not None:
                spent.setdefault(key, {}).setdefault(who, []).append(ms)
        others = "".join(f", {who} {ms:.2f}" for who, ms in parts.items() if who != "client" and ms is not None)
        print(f"  {key}: {rate:.0f} msgs/s, {CPU_MS.get(LAST[0], 0):.2f} CPU ms/msg{others}", flush=True)

    cpu: dict[str, list[float]] = {}

    def mailops_run(key: str, delay: float, senders: int, connections: int, pg: Any) -> None:
        """One mailops run the targets compare (``key`` names it, ending in its delay), then the baseline's."""
        for label, src in [(key, None), (f"before: {key}", baseline_src)] if baseline_src else [(key, None)]:
            measure(label, bench_send(check, f"{label} ms", n, delay, senders, connections, pg, src=src))
            cpu.setdefault(label, []).append(CPU_MS[f"{label} ms"])

    for r in range(rounds):
        print(f"round {r + 1} of {rounds}", flush=True)
        measure("smtplib 0", run_client(check, "smtplib 0 ms", 0, n, lambda i: loop_reuse(i, data)))
        mailops_run("mailops sqlite 1x1 0", 0, 1, 1, None)
        if cluster is not None:
            mailops_run("mailops pg 1x1 0", 0, 1, 1, cluster)
        measure(
            "aiosmtplib 16 20",
            run_client(check, "aiosmtplib 16 conns 20 ms", 20, n, lambda i: aiosmtplib_clients(i, data, 16)),
        )
        measure(
            "smtplib 16 20",
            run_client(check, "smtplib 16 threads 20 ms", 20, n, lambda i: threaded_reuse(i, data, 16)),
        )
        mailops_run("mailops sqlite 4x4 20", 20, 4, 4, None)
        if cluster is not None:
            mailops_run("mailops pg 4x4 20", 20, 4, 4, cluster)
        if r == 0 and not targets_only:
            measure("reconnect 0", run_client(check, "reconnect 0 ms", 0, n, lambda i: loop_reconnect(i, data)))
            if exe:
                measure("mailmerge 0", run_client(check, "mailmerge 0 ms", 0, n, lambda i: loop_mailmerge(exe, i, n)))
            measure("smtplib 20", run_client(check, "smtplib 20 ms", 20, n, lambda i: loop_reuse(i, data)))
            measure("reconnect 20", run_client(check, "reconnect 20 ms", 20, n, lambda i: loop_reconnect(i, data)))
            if exe:
                measure(
                    "mailmerge 20", run_client(check, "mailmerge 20 ms", 20, n, lambda i: loop_mailmerge(exe, i, n))
                )
            measure(
                "smtplib 4 20",
                run_client(check, "smtplib 4 threads 20 ms", 20, n, lambda i: threaded_reuse(i, data, 4)),
            )
            measure("mailops sqlite 1x1 20", bench_send(check, "mailops sqlite 1x1 20 ms", n, 20, 1, 1))
            measure("mailops sqlite 4x1 20", bench_send(check, "mailops sqlite 4x1 20 ms", n, 20, 4, 1))
    load_after = os.getloadavg()

    def med(key: str) -> float | None:
        return statistics.median(rates[key]) if key in rates else None

    def paired(a: str, b: str) -> float | None:
        """Median of the per-round ratios a/b (rounds where both ran)."""
        pairs = [x / y for x, y in zip(rates.get(a, []), rates.get(b, []), strict=False)]
        return statistics.median(pairs) if pairs else None

    body: list[list[Any]] = []

    def row(label: str, senders: str, delay: str, key: str, versus: str | None, versus_name: str = "") -> None:
        value = med(key)
        if value is None:
            return
        ratio = paired(key, versus) if versus else None
        spread = f"{min(rates[key]):.0f}-{max(rates[key]):.0f}" if len(rates[key]) > 1 else "(once)"
        body.append([label, senders, delay, f"{value:.0f}", spread, f"{ratio:.2f}{versus_name}" if ratio else ""])

    row("smtplib, one connection (ceiling)", "1", "0", "smtplib 0", None)
    row("smtplib, reconnect per message", "1", "0", "reconnect 0", "smtplib 0", "x one connection")
    row(f"mailmerge {MAILMERGE_VERSION}", "1", "0", "mailmerge 0", "smtplib 0", "x one connection")
    row("mailops send, SQLite", "1", "0", "mailops sqlite 1x1 0", "smtplib 0", "x one connection")
    row("mailops send, PostgreSQL", "1", "0", "mailops pg 1x1 0", "mailops sqlite 1x1 0", "x SQLite")
    row("smtplib, one connection", "1", "20", "smtplib 20", None)
    row("smtplib, reconnect per message", "1", "20", "reconnect 20", "smtplib 20", "x one connection")
    row(f"mailmerge {MAILMERGE_VERSION}", "1", "20", "mailmerge 20", "smtplib 20", "x one connection")
    row("mailops send", "1", "20", "mailops sqlite 1x1 20", "smtplib 20", "x one connection")
    row("smtplib, 4 threads x one connection", "4", "20", "smtplib 4 20", "smtplib 20", "x one connection")
    row("mailops send, 4 senders", "4", "20", "mailops sqlite 4x1 20", "smtplib 4 20", "x 4 threads")
    row("smtplib, 16 threads x one connection", "16", "20", "smtplib 16 20", None)
    row("aiosmtplib, 16 concurrent connections", "16", "20", "aiosmtplib 16 20", "smtplib 16 20", "x 16 threads")
    row(
        "mailops send, 4 senders x connections: 4, SQLite",
        "4x4",
        "20",
        "mailops sqlite 4x4 20",
        "aiosmtplib 16 20",
        "x aiosmtplib",
    )
    row(
        "mailops send, 4 senders x connections: 4, PostgreSQL",
        "4x4",
        "20",
        "mailops pg 4x4 20",
        "mailops sqlite 4x4 20",
        "x SQLite",
    )
    table(
        f"sending ({n} rows, median of {rounds} interleaved round(s); ratios: median of per-round ratios)",
        ["client", "senders", "delay ms", "msgs/s", "min-max", "ratio"],
        body,
    )
    baseline = med("mailmerge 20") or med("reconnect 20")
    four4 = med("mailops sqlite 4x4 20")
    if baseline and four4:
        name = "mailmerge" if med("mailmerge 20") else "the reconnect loop"
        print(f"mailops 4x4 at 20 ms: {four4 / baseline:.1f}x {name}")
    if why_not and not targets_only:
        print(f"mailmerge: {why_not}; the reconnect loop stands in for it")
    if cluster is None:
        print(f"PostgreSQL runs skipped: {no_pg}")

    cores = os.cpu_count() or 1
    usage = []
    for key, by in spent.items():
        mids = {who: statistics.median(values) for who, values in by.items()}
        total = sum(mids.values())
        usage.append(
            [
                key,
                f"{mids.get('client', 0):.2f}",
                f"{mids['sink']:.2f}" if "sink" in mids else "-",
                f"{mids['PostgreSQL']:.2f}" if "PostgreSQL" in mids else "-",
                f"{total:.2f}",
                f"{1000 * cores / total:.0f}" if total else "-",
                f"{med(key) or 0:.0f}",
            ]
        )
    table(
        f"CPU ms per message, medians (client: the process measured; the sink and PostgreSQL share the {cores} "
        "cores); ceiling: msgs/s if every core were busy all the time",
        ["run", "client", "sink", "PostgreSQL", "total", "ceiling msgs/s", "measured msgs/s"],
        usage,
    )

    timeline = []
    for key, delay, connections in (("mailops sqlite 4x4 20", 20, 16), ("mailops pg 4x4 20", 20, 16)):
        runs = [PHASES[label] for label in PHASES if label.startswith(f"{key} ms")]
        if runs:
            before_first = statistics.median(first for first, _ in runs)
            sending = statistics.median(rate for _, rate in runs)
            wire = connections * 1000 / delay  # every connection busy only with the server's delay
            best = n / (before_first + n / wire)
            timeline.append(
                [key, f"{before_first:.2f}", f"{sending:.0f}", f"{wire:.0f}", f"{best:.0f}", f"{med(key) or 0:.0f}"]
            )
    table(
        "where a 4x4 run's time goes, from its log (medians): before the first message (start-up, checking and "
        "queueing every row, connecting), then sending; best: msgs/s of the whole command with that start and "
        "sending as fast as the server's delay allows",
        ["run", "s before first", "sending msgs/s", "wire msgs/s", "best msgs/s", "measured msgs/s"],
        timeline,
    )

    if baseline_src:
        compared = []
        for key in ("mailops sqlite 1x1 0", "mailops pg 1x1 0", "mailops sqlite 4x4 20", "mailops pg 4x4 20"):
            before, after, ratio = med(f"before: {key}"), med(key), paired(key, f"before: {key}")
            if before and after and ratio:
                cpu_before, cpu_after = statistics.median(cpu[f"before: {key}"]), statistics.median(cpu[key])
                compared.append(
                    [key, f"{before:.0f}", f"{after:.0f}", f"{ratio:.2f}", f"{cpu_before:.2f}", f"{cpu_after:.2f}"]
                )
        table(
            f"before ({baseline_src}) and after (this tree), interleaved; ratio: median of per-round after/before",
            ["run", "before msgs/s", "after msgs/s", "after/before", "before CPU ms/msg", "after CPU ms/msg"],
            compared,
        )

    print("\ntargets (printed, not asserted)")

    def target(text: str, value: float | None, goal: float, unit: str = "") -> None:
        if value is None:
            print(f"  n/a   {text}: not measured")
        else:
            print(f"  {'met' if value >= goal else 'MISSED'}  {text}: {value:.2f}{unit} (goal >= {goal:g}{unit})")

    target("4x4 at 20 ms, SQLite, msgs/s", four4, 650)
    target("4x4 at 20 ms, SQLite / aiosmtplib 16 connections", paired("mailops sqlite 4x4 20", "aiosmtplib 16 20"), 1.2)
    target("1 sender at 0 ms, SQLite / smtplib one connection", paired("mailops sqlite 1x1 0", "smtplib 0"), 0.95)
    target("1 sender at 0 ms, PostgreSQL / SQLite", paired("mailops pg 1x1 0", "mailops sqlite 1x1 0"), 0.8)
    target("4x4 at 20 ms, PostgreSQL / SQLite", paired("mailops pg 4x4 20", "mailops sqlite 4x4 20"), 0.8)
    verdict = "met" if not check.failed else "MISSED"
    print(f"  {verdict}  sink received == log says, in every run ({len(check.lines)} runs):")
    print("\n".join(check.lines))
    print(
        f"load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, "
        f"after: {' '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} cores"
    )


def section_memory(small: int, big: int) -> None:
    out = []
    for n in (small, big):
        with sink(0) as info:
            folder = workdir(info, 1, 1)
            data = write_csv(folder / "rows.csv", n)
            cmd = [
                PY,
                "-m",
                "mailops",
                "--config",
                str(folder / "senders.yaml"),
                "send",
                "--template",
                "renewal",
                "--data",
                str(data),
                "--queue-only",
                "-q",
            ]
            seconds, rss, err = peak_rss(cmd, folder)
            if err.strip():
                print(err, file=sys.stderr)
            out.append([f"{n} rows", f"{rss} MiB", f"{seconds:.1f} s", f"{n / seconds:.0f} rows/s"])
    ratio = int(out[1][1].split()[0]) / int(out[0][1].split()[0])
    table(
        f"validate + render + queue (send --queue-only): peak memory, ratio {ratio:.2f}",
        ["rows", "peak RSS", "wall", "rate"],
        out,
    )


def db_bytes(folder: Path) -> int:
    """Size of the SQLite database with its write-ahead log."""
    return sum(f.stat().st_size for f in folder.glob("bench.db*") if f.is_file())


def attach_workdir(info: dict[str, Any], megabytes: float, n: int) -> tuple[Path, Path, Path]:
    """A one-sender workdir with ``n`` CSV rows and an incompressible attachment of ``megabytes`` MB (like a PDF)."""
    folder = workdir(info, 1, 1)
    data = write_csv(folder / "rows.csv", n)
    brochure = folder / "brochure.pdf"
    with brochure.open("wb") as fh:
        left = int(megabytes * 1_000_000)
        while left > 0:  # bounded: one pass per 1 MB
            step = min(left, 1_000_000)
            fh.write(os.urandom(step))
            left -= step
    subprocess.run(
        [PY, "-m", "mailops", "--config", str(folder / "senders.yaml"), "db", "upgrade"],
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=folder,
    )
    return folder, data, brochure


def queue_only(folder: Path, data: Path, attach: Path | None) -> tuple[float, int, int]:
    """``send --queue-only`` of the rows (with ``--attach``); (seconds, peak RSS MiB, database growth bytes)."""
    before = db_bytes(folder)
    cmd = [PY, "-m", "mailops", "--config", str(folder / "senders.yaml"), "send", "--template", "renewal"]
    cmd += ["--data", str(data), "--queue-only", "-q"] + (["--attach", str(attach)] if attach else [])
    seconds, rss, err = peak_rss(cmd, folder)
    if err.strip():
        print(err, file=sys.stderr)
    return seconds, rss, db_bytes(folder) - before


def encoded_size(path: Path) -> int:
    """Bytes of the attachment as base64 in 76-character lines with CRLF (what a message carries)."""
    raw = path.stat().st_size
    lines = -(-raw // 57)
    return -(-raw // 3) * 4 + 2 * lines


def plain_attachment_loop(info: dict[str, Any], data: list[dict[str, str]], brochure: Path, per_row: bool) -> float:
    """Plain smtplib, one connection: the same message with the same attachment to every row's address.

    ``per_row``: an EmailMessage is built (and the attachment encoded) per row, as a simple script does;
    otherwise the message bytes are built once and only the envelope changes (the ceiling).
    """
    payload = brochure.read_bytes()

    def message(row: dict[str, str]) -> bytes:
        msg = build(row, 0)
        msg.add_attachment(payload, maintype="application", subtype="pdf", filename=brochure.name)
        return msg.as_bytes(policy=SMTP_POLICY)

    once = message(data[0])
    start = time.perf_counter()
    client = smtp_client(info)
    for row in data:
        client.sendmail("s0@example.com", [row["email"]], message(row) if per_row else once)
    client.quit()
    return time.perf_counter() - start


def section_attach(rows_1mb: int, rows_10mb: int, send_rows: int) -> None:
    """Issue 11: queue 1 MB and 10 MB attachments (growth, memory, time), then send them next to plain smtplib."""
    out = []
    with sink(0) as info:
        # "1,000 bodies", measured two ways on fresh databases: the same rows as plain text (no MIME structure
        # for an attachment), and the same rows with an empty brochure.pdf (every byte but the attachment's)
        folder, data, _ = attach_workdir(info, 0, rows_1mb)
        _, _, plain_bodies = queue_only(folder, data, None)
        shutil.rmtree(folder, ignore_errors=True)
        folder, data, empty = attach_workdir(info, 0, rows_1mb)
        _, _, skeletons = queue_only(folder, data, empty)
        shutil.rmtree(folder, ignore_errors=True)
        folder, data, brochure = attach_workdir(info, 1, rows_1mb)
        seconds, rss, growth = queue_only(folder, data, brochure)
        strict = 1.2 * (encoded_size(brochure) + plain_bodies)
        structured = 1.2 * (encoded_size(brochure) + skeletons)
        out.append(
            [
                f"{rows_1mb} x 1 MB, --queue-only",
                f"{rss} MiB (<= 150)",
                f"{seconds:.1f} s (<= 5)",
                f"{growth / 1e6:.2f} MB (<= {strict / 1e6:.2f} with text bodies, <= {structured / 1e6:.2f} with "
                "MIME bodies)",
            ]
        )
        shutil.rmtree(folder, ignore_errors=True)
        folder, data, brochure = attach_workdir(info, 10, rows_10mb)
        seconds, rss, growth = queue_only(folder, data, brochure)
        out.append(
            [f"{rows_10mb} x 10 MB, --queue-only", f"{rss} MiB (<= 200)", f"{seconds:.1f} s", f"{growth / 1e6:.1f} MB"]
        )
        shutil.rmtree(folder, ignore_errors=True)

        folder, data, brochure = attach_workdir(info, 1, send_rows)
        queue_only(folder, data, brochure)
        cmd = [PY, "-m", "mailops", "--config", str(folder / "senders.yaml"), "deliver", "-q"]
        deliver_s, deliver_rss, err = peak_rss(cmd, folder)
        if err.strip():
            print(err, file=sys.stderr)
        out.append([f"{send_rows} x 1 MB, deliver", f"{deliver_rss} MiB", f"{deliver_s:.1f} s", ""])
        row_data = rows(send_rows)
        ceiling = send_rows / plain_attachment_loop(info, row_data, brochure, per_row=False)
        per_row = send_rows / plain_attachment_loop(info, row_data, brochure, per_row=True)
        shutil.rmtree(folder, ignore_errors=True)
    table("attachments (issue 11 targets in brackets)", ["run", "peak RSS", "wall", "database growth"], out)
    rate = send_rows / deliver_s
    table(
        f"sending {send_rows} messages with a 1 MB attachment to the loopback sink (target: >= 0.8 x the plain loop)",
        ["client", "msgs/s", "ratio"],
        [
            ["smtplib, one connection, message bytes built once", f"{ceiling:.1f}", "1.00"],
            ["smtplib, one connection, EmailMessage built per row", f"{per_row:.1f}", f"{per_row / ceiling:.2f}"],
            ["mailops deliver (whole process)", f"{rate:.1f}", f"{rate / ceiling:.2f}"],
        ],
    )


def timed(cmd: list[str], repeat: int = 7, cwd: Path | None = None) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=cwd, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def section_startup() -> None:
    typer = timed([PY, "-c", "import typer"])
    help_ = timed([PY, "-m", "mailops", "--help"])
    version = timed([PY, "-m", "mailops", "--version"])
    table(
        "start-up (median of 7)",
        ["command", "seconds", "ratio to import typer"],
        [
            ["python -c 'import typer'", f"{typer:.3f}", "1.00"],
            ["mailops --help", f"{help_:.3f}", f"{help_ / typer:.2f}"],
            ["mailops --version", f"{version:.3f}", f"{version / typer:.2f}"],
        ],
    )


def section_log(n: int) -> None:
    with sink(0) as info:
        folder = workdir(info, 4, 1)
    # create the schema through mailops, then bulk-load attempt rows directly
    subprocess.run(
        [PY, "-m", "mailops", "--config", str(folder / "senders.yaml"), "db", "upgrade"],
        env=ENV,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    db = sqlite3.connect(folder / "bench.db")
    now = time.time()
    batch = []
    for i in range(n):
        outcome = "sent" if i % 50 else "failed"
        batch.append(
            (
                now - (n - i) * 2.0,
                i,
                f"s{i % 4}",
                "default",
                f"s{i % 4}@example.com",
                f"customer{i}@example.org",
                "Subject",
                "renewal",
                f"<{i}@example.com>",
                250,
                "OK",
                outcome,
                0.01,
            )
        )
        if len(batch) >= 50000:
            db.executemany(
                "INSERT INTO attempts (at, message_pk, sender, route, from_addr, recipients, subject,"
                " template, message_id, smtp_code, smtp_text, outcome, duration)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                batch,
            )
            batch = []
    db.commit()
    db.close()
    base = [PY, "-m", "mailops", "--config", str(folder / "senders.yaml")]
    results = []
    for label, args in [
        ("log --limit 50", ["log", "--limit", "50", "--json"]),
        ("log --sender s1 --limit 50", ["log", "--sender", "s1", "--limit", "50", "--json"]),
        ("log --to customer5@example.org", ["log", "--to", "customer5@example.org", "--json"]),
        ("stats (7d)", ["stats", "--json"]),
        ("stats --since 30d", ["stats", "--since", "30d", "--json"]),
    ]:
        results.append([label, f"{timed(base + args, repeat=3, cwd=folder):.3f}"])
    results.append(["(mailops --version, process start)", f"{timed([*base, '--version'], repeat=3):.3f}"])
    table(f"queries over {n:,} log rows (whole command, seconds)", ["command", "seconds"], results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000, help="rows for every sending run (0 ms and 20 ms)")
    parser.add_argument(
        "--no-mailmerge",
        action="store_true",
        help=f"do not install and run mailmerge {MAILMERGE_VERSION} for comparison",
    )
    parser.add_argument("--memory-rows", type=int, nargs=2, default=[1000, 100000])
    parser.add_argument("--log-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--baseline-src",
        help="another checkout's src folder: its mailops runs interleaved with these, for a before/after table",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved repetitions of the sending runs the targets compare"
    )
    parser.add_argument(
        "--attach-rows",
        type=int,
        nargs=3,
        default=[1000, 1000, 200],
        metavar=("ROWS_1MB", "ROWS_10MB", "SEND_ROWS"),
        help="rows queued with a 1 MB and a 10 MB attachment, and messages with 1 MB sent to the sink",
    )
    parser.add_argument(
        "--only",
        choices=["send", "targets", "memory", "startup", "log", "attach"],
        action="append",
        help="targets: only the interleaved sending runs the targets compare (no slow baselines)",
    )
    args = parser.parse_args()
    only = set(args.only or ["send", "memory", "startup", "log", "attach"])
    print(f"mailops benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if "startup" in only:
        section_startup()
    if "send" in only or "targets" in only:
        section_send(args.rows, not args.no_mailmerge, args.rounds, "send" not in only, args.baseline_src)
    if "memory" in only:
        section_memory(*args.memory_rows)
    if "log" in only:
        section_log(args.log_rows)
    if "attach" in only:
        section_attach(*args.attach_rows)


if __name__ == "__main__":
    main()
