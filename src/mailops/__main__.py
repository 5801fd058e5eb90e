"""``python -m mailops``."""

from .cli import run

run()
