"""The words an error line uses for what the user passed: CLI options by default, the caller's own names otherwise.

The checks below the CLI (routing, prepare, templates, data files, gateway)
tell the user what to change, naming it as the CLI spells it (``--route``,
``--to ADDR``, ``standard input``). The Python API and the Django backend run
the same checks; inside :func:`speaking` those names become theirs
(``route``, ``to=...``, ``MAILOPS_ROUTE``), so an application's developer is
never told about an option they cannot pass. A context variable, so threads
and concurrent callers each keep their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar

_vocabulary: ContextVar[Mapping[str, str] | None] = ContextVar("mailops_vocabulary", default=None)

#: the keyword arguments of mailops.api.send/enqueue for the options of `mailops send`
API = {
    "--route": "route",
    "--sender": "sender",
    "--to": "to",
    "--cc": "cc",
    "--bcc": "bcc",
    "--group": "group",
    "--data": "data",
    "--to-column": "to_column",
    "--template": "template",
    "--subject": "subject",
    "--body": "body",
    "--body-file": "body_file",
    "--var": "variables",
    "--attach": "attachments",
    "--reply-to": "reply_to",
    "--batch": "batch",
    "--at": "at",
    "--skip-invalid": "skip_invalid",
    "--include-suppressed": "include_suppressed",
}


def term(cli: str) -> str:
    """``cli`` (an option such as ``--route``, optionally with its placeholder: ``--to ADDR``; or a phrase such as
    ``standard input``) in the vocabulary in force. With an API vocabulary, ``--to ADDR`` becomes ``to=...``."""
    names = _vocabulary.get()
    if names is None:
        return cli
    option, space, _ = cli.partition(" ")
    if space and option.startswith("--") and option in names:
        return f"{names[option]}=..."
    return names.get(cli, cli)


def variable(name: str) -> str:
    """How to give the template variable ``name``: ``--var name=...``, or ``variables={'name': ...}`` for the API."""
    option = term("--var")
    return f"--var {name}=..." if option == "--var" else f"{option}={{{name!r}: ...}}"


@contextlib.contextmanager
def speaking(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, :func:`term` uses ``names`` (CLI word -> the caller's word)."""
    token = _vocabulary.set(names)
    try:
        yield
    finally:
        _vocabulary.reset(token)
