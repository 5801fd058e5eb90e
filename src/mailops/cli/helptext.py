"""Help text that reads well: a metavar that names what each value is, and examples per command.

Typer writes a value's Python type where a reader wants its meaning
(``--to <list[str]>``, ``--limit <int range>``, ``{sender} <str>``). Here
every option gets a metavar (``--to ADDR``, ``--limit N``), the same one for
the same option in every command, and arguments show theirs without the type
(``ID``, ``SENDER...``). :func:`make_readable` applies it to the whole command
tree once it is built; :func:`examples` makes the ``Examples:`` block each
command shows under its options.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperArgument, TyperOption

#: option name → metavar; an option not listed here shows its own name in capitals
OPTION_METAVARS = {
    "--config": "PATH",
    "--route": "ROUTE",
    "--sender": "SENDER",
    "--to": "ADDR",
    "--cc": "ADDR",
    "--bcc": "ADDR",
    "--reply-to": "ADDR",
    "--send-to": "ADDR",
    "--group": "GROUP",
    "--data": "FILE",
    "--to-column": "COLUMN",
    "--template": "NAME",
    "--subject": "TEXT",
    "--body": "TEXT",
    "--body-file": "FILE",
    "--var": "KEY=VALUE",
    "--header": "'NAME: VALUE'",
    "--attach": "PATH",
    "--attachments-dir": "DIR",
    "--batch": "KEY",
    "--preview": "N",
    "--limit": "N",
    "--days": "N",
    "--at": "WHEN",
    "--max-seconds": "S",
    "--state": "STATE",
    "--status": "STATUS",
    "--since": "24h|7d|DATE",
    "--before": "DATE|30d",
    "--period": "day|month|all",
    "--host": "HOST",
    "--port": "PORT",
    "--web": "PORT",
    "--maildir": "DIR",
    "--dir": "DIR",
    "--reason": "TEXT",
}

#: argument name (the Python parameter) → metavar; "..." is added for an argument that takes several
ARGUMENT_METAVARS = {
    "message": "ID",
    "directory": "DIR",
    "sender": "SENDER",
    "senders": "SENDER",
    "addresses": "ADDR",
    "file": "FILE",
}


class ReadableArgument(TyperArgument):
    """An argument shown by its metavar alone: ``ID`` in the list, ``[ID]`` or ``SENDER...`` in the usage line."""

    def display_type_rich(self, ctx: Any) -> str | None:
        """No ``<int range>`` after the name: the metavar and the help say what it is."""
        return None

    def _name(self) -> str:
        name = (self.metavar or (self.name or "").upper()).removesuffix("...")
        return f"{name}..." if self.nargs != 1 else name

    def _rich_display_name(self) -> str:
        return self._name()

    def _usage_display_name(self) -> str:
        return self._name() if self.required else f"[{self._name()}]"


def make_readable(command: Any) -> None:
    """Give every option and argument of ``command`` and its sub-commands a readable metavar."""
    for param in getattr(command, "params", []):
        if isinstance(param, TyperArgument) and not isinstance(param, ReadableArgument):
            if param.metavar is None:
                param.metavar = ARGUMENT_METAVARS.get(param.name or "", (param.name or "").upper())
            # the same object, shown differently: Typer builds it, the help only reads it
            param.__class__ = ReadableArgument
        elif isinstance(param, TyperOption) and param.metavar is None and not (param.is_flag or param.count):
            longest = max(param.opts, key=len)
            param.metavar = OPTION_METAVARS.get(longest, longest.lstrip("-").upper().replace("-", "_"))
    for sub in getattr(command, "commands", {}).values():
        make_readable(sub)


def examples(*lines: str) -> str:
    """The ``Examples:`` block of a command's help (Typer's ``epilog``), each line kept as written."""
    # "\b" tells the help formatter not to re-wrap the paragraph that follows
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
