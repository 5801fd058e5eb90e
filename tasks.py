#!/usr/bin/env python3
"""Developer entry points that work on a fresh machine with only python3.

    python3 tasks.py demo    # install into .venv, run a real mail merge to the local capture server
    python3 tasks.py test    # install into .venv, run the tests under branch coverage (pytest arguments pass through)
    python3 tasks.py check   # lint (ruff check), format check (ruff format --check), types (mypy), then `test`
    python3 tasks.py bench   # install into .venv, run the benchmark (README: "Performance and the benchmark")

The first run creates .venv and installs mailops with its test extras from
the package index; later runs reuse it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".mailops-installed"

# What `check` runs before the tests, in order; the first failure stops it. Settings: pyproject.toml.
CHECKS = [
    ("lint", ["ruff", "check", "."], "`.venv/bin/ruff check --fix .` repairs the mechanical findings"),
    ("format", ["ruff", "format", "--check", "."], "`.venv/bin/ruff format .` formats the tree"),
    ("types", ["mypy"], "see [tool.mypy] in pyproject.toml; a type: ignore needs its code and a reason"),
]


def ensure_env() -> None:
    """Create .venv and install the package (editable) with test extras when pyproject.toml changed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - this file runs under any python3, before .venv exists
        sys.exit(f"mailops needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pyproject = ROOT / "pyproject.toml"
    if STAMP.exists() and STAMP.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    print("installing mailops and its test dependencies into .venv", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.touch()


def main(argv: list[str]) -> int:
    """Run the task named by argv[0]; returns the exit code."""
    task = argv[0] if argv else "help"
    if task not in ("demo", "test", "check", "bench"):
        print(__doc__)
        return 0 if task == "help" else 2
    ensure_env()
    if task == "demo":
        return subprocess.run([str(BIN / "mailops"), "demo", "--dir", str(ROOT / "demo-run"), *argv[1:]]).returncode
    if task == "bench":
        # An editable install is not byte-compiled; do it, so that no measured command pays for
        # compiling mailops' sources (PYTHONDONTWRITEBYTECODE=1 would make every run pay).
        subprocess.run([str(PYTHON), "-m", "compileall", "-q", str(ROOT / "src")], check=True)
        return subprocess.run([str(PYTHON), str(ROOT / "bench" / "run.py"), *argv[1:]]).returncode
    if task == "check":
        for name, command, hint in CHECKS:
            print(f"== {name}: {' '.join(command)}", flush=True)
            code = subprocess.run([str(PYTHON), "-m", *command], cwd=ROOT).returncode
            if code != 0:
                print(f"{name} failed (exit {code}); the tests did not run. {hint}", file=sys.stderr)
                return 1
        print("== tests", flush=True)
    return run_tests(argv[1:])


def run_tests(pytest_args: list[str]) -> int:
    """Run pytest under branch coverage, child processes included, and print the least-covered modules."""
    coverage = [str(PYTHON), "-m", "coverage"]
    subprocess.run([*coverage, "erase"], cwd=ROOT, check=True)
    code = subprocess.run([*coverage, "run", "-m", "pytest", *pytest_args], cwd=ROOT).returncode
    if code == 5:
        print("pytest collected no tests: that is a failure, not a pass", file=sys.stderr)
        return 1
    # Every process wrote its own data file ([tool.coverage.run] parallel); join them, then report.
    reported = subprocess.run([*coverage, "combine", "-q"], cwd=ROOT).returncode == 0
    if reported:
        print("\nbranch coverage, least covered first (fully covered modules left out):", flush=True)
        reported = subprocess.run([*coverage, "report"], cwd=ROOT).returncode == 0
    if not reported:
        print("coverage: no report (see above)", file=sys.stderr)
        return code or 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
