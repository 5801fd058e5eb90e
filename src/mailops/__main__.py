"""``python -m mailops``."""

from .cli import main

main()
