"""One exception hierarchy for mailops; the CLI maps ``exit_code`` to the process exit code.

Exit codes are a contract with cron: 0 everything requested was done, 1 some
messages failed or were deferred (or a check found a problem), 2 usage,
config or input error (nothing was sent). Every class here is an exit-2
error; exit 1 is not an error but an outcome, which the commands report
from their delivery or check results.
"""

from __future__ import annotations


class MailopsError(Exception):
    """Root of every error mailops expects; its message is one line meant for the operator."""

    #: process exit code when this error ends a command
    exit_code: int = 2
    #: exit code of ``mailops sendmail``, whose callers (cron, mailx, PHP) read sysexits.h codes
    sysexit: int = 64  # EX_USAGE

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(MailopsError):
    """Options that contradict each other or name nothing (unknown route, group, sender)."""


class ConfigError(MailopsError):
    """senders.yaml is missing, unreadable or invalid; the message names the file and key path."""

    sysexit = 78  # EX_CONFIG


class InputError(MailopsError):
    """A data file, template, address or attachment is bad; the message names file, row and field."""

    sysexit = 65  # EX_DATAERR


class NoInputError(InputError):
    """``mailops sendmail`` got no message on standard input."""

    sysexit = 66  # EX_NOINPUT


class SecretError(MailopsError):
    """A password cannot be stored or found (no usable keyring, missing entry, failing command)."""

    sysexit = 78  # EX_CONFIG


class StoreError(MailopsError):
    """The database cannot be opened, migrated or reached; nothing was sent."""

    sysexit = 75  # EX_TEMPFAIL: nothing was queued, the caller may try again


class InvalidBatchError(InputError):
    """Some rows of a batch are invalid; carries the first problems so the CLI can list them."""

    def __init__(self, problems: list[str], total_rows: int, problem_count: int | None = None) -> None:
        self.problems = problems
        self.total_rows = total_rows
        self.problem_count = problem_count if problem_count is not None else len(problems)
        if self.problem_count == 1:
            text = f"{problems[0]} (nothing was sent)"
        else:
            text = (
                f"{self.problem_count} of {total_rows} rows are invalid, nothing was sent; "
                "fix them or pass --skip-invalid to send only the valid rows"
            )
        super().__init__(text)
