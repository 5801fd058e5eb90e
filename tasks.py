#!/usr/bin/env python3
"""Developer entry points that work on a fresh machine with only python3.

    python3 tasks.py demo    # install into .venv, run a real mail merge to the local capture server
    python3 tasks.py test    # install into .venv, run the whole test suite
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
    if task not in ("demo", "test", "bench"):
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
    code = subprocess.run([str(PYTHON), "-m", "pytest", *argv[1:]], cwd=ROOT).returncode
    if code == 5:
        print("pytest collected no tests: that is a failure, not a pass", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
