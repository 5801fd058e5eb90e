"""Shared fixtures live in plugin modules, one per concern."""

pytest_plugins = [
    "tests.fixtures_home",
    "tests.fixtures_smtp",
    "tests.fixtures_cli",
    "tests.fixtures_pg",
]
