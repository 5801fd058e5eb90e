"""Where mailops keeps its files: config discovery and the user data folder.

``MAILOPS_HOME`` redirects every per-user location (config and data) to one
folder; tests and sandboxed runs use it so nothing touches the real account.
"""

from __future__ import annotations

import os
from pathlib import Path

APP_NAME = "mailops"
CONFIG_FILENAME = "senders.yaml"


def user_config_dir() -> Path:
    """Folder searched last for senders.yaml."""
    home = os.environ.get("MAILOPS_HOME")
    if home:
        return Path(home) / "config"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def user_data_dir() -> Path:
    """Folder holding the default SQLite database."""
    home = os.environ.get("MAILOPS_HOME")
    if home:
        return Path(home) / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


def config_candidates(explicit: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    """Places to look for the config, in order, each with how it was chosen."""
    if explicit:
        return [(Path(explicit), "--config")]
    env = os.environ.get("MAILOPS_CONFIG")
    if env:
        return [(Path(env), "MAILOPS_CONFIG")]
    return [
        (Path.cwd() / CONFIG_FILENAME, "current folder"),
        (user_config_dir() / CONFIG_FILENAME, "user config folder"),
    ]
