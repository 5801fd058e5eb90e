"""The ``mailops`` command line (see :mod:`mailops.cli.app`); no Typer or Rich below this package."""

from .app import app, main, run

__all__ = ["app", "main", "run"]
