"""The names of the environment variables that carry a sender's secret.

Both :mod:`mailops.config` (which refuses two sender names that map to the
same variable) and :mod:`mailops.secrets` (which reads them) need these
names; keeping them here lets ``secrets`` depend on ``config`` and not the
other way round.
"""

from __future__ import annotations

ENV_PREFIX = "MAILOPS_PASSWORD_"
OAUTH_ENV_PREFIX = "MAILOPS_OAUTH_"


def password_env_var(sender_key: str) -> str:
    """The environment variable holding ``sender_key``'s password: ``sales-eu`` → ``MAILOPS_PASSWORD_SALES_EU``."""
    return ENV_PREFIX + _suffix(sender_key)


def oauth_env_var(sender_key: str) -> str:
    """The environment variable holding ``sender_key``'s OAuth2 refresh token: ``MAILOPS_OAUTH_SALES_EU``."""
    return OAUTH_ENV_PREFIX + _suffix(sender_key)


def _suffix(sender_key: str) -> str:
    return sender_key.upper().replace("-", "_").replace(".", "_")
