"""mailops benchmark: prints msgs/s, ratios, peak memory and start-up times.

    python3 tasks.py bench                 # everything, default sizes
    python3 tasks.py bench --rows 2000 --only send

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


@contextmanager
def sink(delay_ms: float) -> Iterator[dict[str, Any]]:
    """Start bench/sink.py in its own process; yields {"port", "ca_file"}."""
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
    try:
        for _ in range(200):  # bounded wait for the sink to listen
            if ready.exists() and ready.read_text():
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("sink did not start")
        info = json.loads(ready.read_text())
        info["count_file"] = folder / "count"
        yield info
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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


def workdir(info: dict[str, Any], senders: int, connections: int, strategy: str = "round-robin") -> Path:
    folder = scratch("mailops-bench-")
    (folder / "templates" / "renewal").mkdir(parents=True)
    (folder / "templates" / "renewal" / "subject.txt").write_text("Your {{ plan }} plan renews on {{ date }}\n")
    (folder / "templates" / "renewal" / "body.txt").write_text(
        "Hello {{ name }},\nyour {{ plan }} plan renews on {{ date }}.\n"
    )
    names = [f"s{i}" for i in range(senders)]
    lines = [
        "timezone: UTC",
        "database: bench.db",
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


def mailops(folder: Path, *args: str) -> tuple[float, subprocess.CompletedProcess[str], int]:
    """Run mailops in ``folder``; returns (wall seconds, process, peak RSS in KiB)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [PY, "-m", "mailops", "--config", str(folder / "senders.yaml"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=folder,
        check=False,
    )
    return time.perf_counter() - start, proc, 0


def peak_rss(cmd: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run ``cmd``; (seconds, peak RSS in MiB, stderr)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=cwd)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    _, _status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss // 1024, err


def bench_send(n: int, delay_ms: float, senders: int, connections: int) -> float:
    """mailops send of ``n`` template rows; returns msgs/s."""
    with sink(delay_ms) as info:
        folder = workdir(info, senders, connections)
        data = write_csv(folder / "rows.csv", n)
        seconds, proc, _ = mailops(folder, "send", "--template", "renewal", "--data", str(data), "-q")
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            raise SystemExit(f"mailops send failed with {proc.returncode}")
        return n / seconds


def table(title: str, header: list[str], body: list[list[Any]]) -> None:
    print(f"\n{title}")
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]
    for line in [header, ["-" * w for w in widths], *body]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)))


def section_send(n: int, with_mailmerge: bool) -> None:
    """Every client on the same ``n`` rows: at 0 ms, then with a 20 ms per-message server delay."""
    data = rows(n)
    exe, why_not = mailmerge_command() if with_mailmerge else (None, "skipped (--no-mailmerge)")
    results = []
    with sink(0) as info:
        reuse = n / loop_reuse(info, data)
        reconnect = n / loop_reconnect(info, data)
        merge = n / loop_mailmerge(exe, info, n) if exe else None
    mailops_1 = bench_send(n, 0, 1, 1)
    results.append(["smtplib, one connection (ceiling)", "1", "0", f"{reuse:.0f}", "1.00"])
    results.append(["smtplib, reconnect per message", "1", "0", f"{reconnect:.0f}", f"{reconnect / reuse:.2f}"])
    if merge:
        results.append([f"mailmerge {MAILMERGE_VERSION}", "1", "0", f"{merge:.0f}", f"{merge / reuse:.2f}"])
    results.append(["mailops send (render+outbox+log)", "1", "0", f"{mailops_1:.0f}", f"{mailops_1 / reuse:.2f}"])
    with sink(20) as info:
        reuse20 = n / loop_reuse(info, data)
        reconnect20 = n / loop_reconnect(info, data)
        merge20 = n / loop_mailmerge(exe, info, n) if exe else None
        reuse20x4 = n / threaded_reuse(info, data, 4)
        reuse20x16 = n / threaded_reuse(info, data, 16)
    one20 = bench_send(n, 20, 1, 1)
    four20 = bench_send(n, 20, 4, 1)
    four4_20 = bench_send(n, 20, 4, 4)
    baseline, baseline_name = (merge20, "mailmerge") if merge20 else (reconnect20, "reconnect loop")
    results.append(["smtplib, one connection", "1", "20", f"{reuse20:.0f}", "1.00"])
    results.append(["smtplib, reconnect per message", "1", "20", f"{reconnect20:.0f}", f"{reconnect20 / reuse20:.2f}"])
    if merge20:
        results.append([f"mailmerge {MAILMERGE_VERSION}", "1", "20", f"{merge20:.0f}", f"{merge20 / reuse20:.2f}"])
    results.append(["mailops send", "1", "20", f"{one20:.0f}", f"{one20 / reuse20:.2f}"])
    results.append(
        [
            "smtplib, 4 threads x one connection",
            "4",
            "20",
            f"{reuse20x4:.0f}",
            f"{reuse20x4 / reuse20:.2f}x one connection",
        ]
    )
    results.append(
        [
            "mailops send, 4 senders",
            "4",
            "20",
            f"{four20:.0f}",
            f"{four20 / one20:.2f}x one sender, {four20 / reuse20x4:.2f} of 4 threads",
        ]
    )
    results.append(
        [
            "smtplib, 16 threads x one connection",
            "16",
            "20",
            f"{reuse20x16:.0f}",
            f"{reuse20x16 / reuse20:.2f}x one connection",
        ]
    )
    results.append(
        [
            "mailops send, 4 senders x connections: 4",
            "4x4",
            "20",
            f"{four4_20:.0f}",
            f"{four4_20 / baseline:.1f}x {baseline_name}, {four4_20 / reuse20x16:.2f} of 16 threads",
        ]
    )
    table(
        f"sending ({n} rows, 0 ms and 20 ms per message)", ["client", "senders", "delay ms", "msgs/s", "ratio"], results
    )
    if why_not:
        print(f"mailmerge: {why_not}; the reconnect loop stands in for it")


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
    parser.add_argument("--only", choices=["send", "memory", "startup", "log"], action="append")
    args = parser.parse_args()
    only = set(args.only or ["send", "memory", "startup", "log"])
    print(f"mailops benchmark on {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if "startup" in only:
        section_startup()
    if "send" in only:
        section_send(args.rows, not args.no_mailmerge)
    if "memory" in only:
        section_memory(*args.memory_rows)
    if "log" in only:
        section_log(args.log_rows)


if __name__ == "__main__":
    main()
