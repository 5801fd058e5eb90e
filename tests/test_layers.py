"""The layering rules of the source tree, checked on the import statements themselves.

Typer and Rich belong to the command line (``mailops/cli/``) alone, so the
domain modules stay usable from the Python API and Django without them; and
``secrets`` depends on ``config``, never the other way round.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "mailops"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (at any depth, lazily too), relative ones as ``.name``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                found.update(f".{module}" if module else f".{alias.name}" for alias in node.names)
            else:
                found.add(module)
    return found


def test_no_typer_or_rich_below_the_cli() -> None:
    offenders = {
        path.name: sorted(m for m in _imports(path) if m.split(".")[0] in ("typer", "rich", "click"))
        for path in SRC.glob("*.py")
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}
    assert (SRC / "cli" / "app.py").is_file()


def test_config_does_not_import_secrets() -> None:
    imported = _imports(SRC / "config.py")
    assert ".secrets" not in imported and "mailops.secrets" not in imported
    assert ".envnames" in _imports(SRC / "secrets.py")


def test_command_modules_keep_their_annotations_as_objects() -> None:
    """Typer reads the annotations of every command at every start of mailops. Postponed annotations
    (``from __future__ import annotations``) are strings it must compile and evaluate, about 40 ms of each
    command's start; a name imported only for type checking is quoted instead."""
    modules = [path for path in (SRC / "cli").glob("*.py") if "typer.Typer(" in path.read_text(encoding="utf-8")]
    assert {path.name for path in modules} >= {"app.py", "sending.py", "setup.py", "checks.py", "history.py"}
    postponed = [path.name for path in modules if "__future__" in _imports(path)]
    assert postponed == []
