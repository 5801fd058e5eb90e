"""From a send request to prepared messages: recipients, variables, rendering, attachments.

No routing and no database here: the caller picks the sender, and this module
turns the request into ``PreparedMessage`` objects (or ``RowProblem`` for a bad
row) one at a time, so a 100,000-row data file streams through without being
held in memory. Problems with the request as a whole raise at once; problems
with one row are yielded so the caller can list every bad row before sending.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address
from pathlib import Path
from typing import Any

from .compose import (
    MessageBuilder,
    PreparedEmail,
    check_header_text,
    make_address,
    make_message_id,
    parse_address,
)
from .config import Config, Route, Sender
from .datafiles import DataRow, read_rows
from .errors import InputError, UsageError
from .files import read_text_file, regular_file_problem
from .headers import HeaderPlan, HeaderSpec, merged, parse_header_option
from .limits import BODY_FILE_MAX_BYTES
from .templates import (
    MessageTemplate,
    inline_template,
    list_templates,
    load_template,
    render,
    render_string,
    unknown_template_message,
)
from .wording import term

NAME_COLUMN = "name"
ATTACHMENTS_COLUMN = "attachments"
SINGLE_LABEL = "message"

# compose(to, subject, text, html, attachments, where, variables): everything else is fixed for the whole
# request (the variables render the added headers)
_Compose = Callable[[list[Address], str, str, "str | None", list[Path], str, Mapping[str, Any]], PreparedEmail]


@dataclass
class SendRequest:
    """What the operator asked ``mailops send`` for, before any checking."""

    to: list[str] = field(default_factory=list)
    cc: list[str] = field(default_factory=list)
    bcc: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    data_file: Path | None = None
    to_column: str = "email"
    template: str | None = None
    subject: str | None = None
    body: str | None = None
    body_file: Path | None = None
    variables: dict[str, str] = field(default_factory=dict)
    attachments: list[Path] = field(default_factory=list)  # a path holding {{ }} or {% %} is rendered per message
    attachments_dir: Path | None = None  # where row attachments live (default: the data file's folder)
    allow_attachments_outside: bool = False  # the operator lets row-driven paths leave that folder
    reply_to: str | None = None
    limit: int | None = None
    headers: list[str] = field(default_factory=list)  # --header 'Name: value' items (values are Jinja)


@dataclass
class PreparedMessage:
    """One message ready to queue: the composed email plus where it came from."""

    row: int | None  # data row number, None without --data
    label: str  # "customers.csv row 3" or "message"
    email: PreparedEmail
    template: str | None
    dedup_key: str  # sha256 of recipients + row values: the same row in a re-run --batch is recognised
    suppressed: list[tuple[str, str]] = field(default_factory=list)  # (recipient, reason) left out by send
    keep_date: bool = False  # a piped message's own Date, not stamped at hand-over (sendmail, Django)
    note: str | None = None  # what mailops changed in a piped message (a From rewrite), shown in the log
    include_suppressed: bool = False  # the suppression list does not apply (send --include-suppressed)


@dataclass
class RowProblem:
    """A row that cannot become a message; ``message`` is one line: label, field, problem and fix."""

    row: int | None
    label: str
    message: str


def parse_vars(items: list[str]) -> dict[str, str]:
    """``--var KEY=VALUE`` items as a dict (later wins); UsageError for an item that is not KEY=VALUE."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--var {item!r}: expected KEY=VALUE")
        if not key.isidentifier():
            raise UsageError(
                f"--var {item!r}: KEY must be a name of letters, digits and '_' that a template can use (got {key!r})"
            )
        out[key] = value
    return out


def header_options(request: SendRequest) -> list[HeaderSpec]:
    """The request's ``--header`` items checked; UsageError (exit 2) with the one-line reason for a bad one."""
    specs = []
    for item in request.headers:
        try:
            specs.append(parse_header_option(item))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    return specs


def _hint(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def check_request(request: SendRequest, config: Config) -> None:
    """UsageError if the options contradict each other or name something unknown; nothing is read or sent."""
    has_direct = bool(request.to or request.groups)
    if request.data_file is not None and has_direct:
        raise UsageError(
            f"{term('--data')} cannot be combined with {term('--to')} or {term('--group')}: the data file names the "
            f"recipients (use {term('--cc')}/{term('--bcc')} for copies to every message)"
        )
    if request.data_file is None and not has_direct:
        raise UsageError(f"no recipients: pass {term('--to ADDR')}, {term('--group NAME')} or {term('--data FILE')}")
    if request.data_file is None and request.to_column != "email":
        raise UsageError(f"{term('--to-column')} needs {term('--data FILE')}; remove it or add {term('--data')}")
    if request.template and request.subject is not None:
        raise UsageError(
            f"{term('--template')} and {term('--subject')} cannot be used together: the template has its own "
            "subject.txt"
        )
    if request.template and (request.body is not None or request.body_file is not None):
        raise UsageError(
            f"{term('--template')} and {term('--body')}/{term('--body-file')} cannot be used together: the template "
            "has its own body"
        )
    if request.body is not None and request.body_file is not None:
        raise UsageError(f"{term('--body')} and {term('--body-file')} cannot be used together; pick one")
    if not request.template:
        if request.subject is None:
            if request.body is not None or request.body_file is not None:
                raise UsageError(f"{term('--body')}/{term('--body-file')} needs {term('--subject TEXT')}")
            raise UsageError(
                f"no message content: pass {term('--template NAME')}, or {term('--subject TEXT')} with "
                f"{term('--body')} or {term('--body-file')}"
            )
        if request.body is None and request.body_file is None:
            raise UsageError(f"{term('--subject')} needs {term('--body TEXT')} or {term('--body-file FILE')}")
    if request.limit is not None and request.limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {request.limit})")
    header_options(request)
    known_groups = list(config.groups)
    for group in request.groups:
        if group not in config.groups:
            raise UsageError(
                f"unknown group {group!r}; {_hint(group, known_groups)}known groups: "
                f"{', '.join(known_groups) or '(none)'} (add it under 'groups:' in {config.path})"
            )
    if request.template and request.template not in list_templates(config.templates_dir):
        raise UsageError(unknown_template_message(config.templates_dir, request.template))


# ---------------------------------------------------------------- helpers


def _load(request: SendRequest, config: Config) -> MessageTemplate:
    if request.template:
        return load_template(config.templates_dir, request.template)
    subject = request.subject or ""
    if request.body_file is not None:
        path = Path(request.body_file)
        body = read_text_file(path, BODY_FILE_MAX_BYTES, label=f"{term('--body-file')} {path}")
        return inline_template(subject, body, body_source=str(path))
    return inline_template(subject, request.body or "")


def _addresses(values: list[str], where: str) -> list[Address]:
    return [parse_address(value, where=where) for value in values]


def _dedup(addresses: list[Address]) -> list[Address]:
    seen: set[str] = set()
    out: list[Address] = []
    for addr in addresses:
        key = addr.addr_spec.casefold()
        if key not in seen:
            seen.add(key)
            out.append(addr)
    return out


# What json.dumps(..., sort_keys=True, default=str, ensure_ascii=False) builds on every call, built once.
# The keys it gives are stored (a re-run of a --batch finds its rows by them): the text must never change.
_DEDUP_JSON = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False)


def _dedup_key(envelope_to: list[str], values: Mapping[str, Any]) -> str:
    payload = _DEDUP_JSON.encode({"recipients": sorted(envelope_to), "values": values})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


@dataclass(frozen=True)
class _Attachments:
    """Where a request's attachments come from: fixed paths, per-message path templates, the row folder."""

    fixed: list[Path]
    templates: list[tuple[str, Path]]  # (the --attach text, the folder its rendered paths must stay in)
    row_base: Path | None  # folder of row attachments (None without --data)
    contained: bool  # row-driven paths must stay inside their folder

    def for_message(self, variables: Mapping[str, Any], where: str, row: DataRow | None) -> list[Path]:
        """Fixed paths, then each --attach template rendered with this message's variables, then the row's own."""
        paths = list(self.fixed)
        for text, folder in self.templates:
            rendered = render_string(text, variables, where=where, source=f"{term('--attach')} {text!r}").strip()
            path = Path(rendered).expanduser()
            if row is not None and self.contained:
                _check_inside(
                    path,
                    folder,
                    f"{where}: {term('--attach')} {text!r} renders {rendered!r}",
                    "the folder it names",
                    "fix the row's value or the pattern",
                )
            paths.append(path)
        if row is not None and self.row_base is not None:
            paths.extend(self._row_paths(row))
        return paths

    def _row_paths(self, row: DataRow) -> list[Path]:
        """Paths from the ``attachments`` cell: ';'-separated (or a list in JSON/YAML), literal (never rendered)."""
        cell = row.values.get(ATTACHMENTS_COLUMN)
        if cell is None:
            return []
        assert self.row_base is not None
        items = [str(item) for item in cell] if isinstance(cell, list) else str(cell).split(";")
        where = f"{row.label}: column {ATTACHMENTS_COLUMN!r}"
        paths: list[Path] = []
        for item in items:
            item = item.strip()
            if not item:
                continue
            if _is_template(item):
                raise InputError(
                    f"{where}: {item!r} looks like a template, but values from a data file are never rendered; "
                    f"put the pattern in the command instead (--attach {item!r})"
                )
            path = Path(item)
            path = path if path.is_absolute() else self.row_base / path
            if self.contained:
                _check_inside(
                    path,
                    self.row_base,
                    f"{where}: {item!r}",
                    "the attachments folder",
                    "move the file, point --attachments-dir at its folder",
                )
            paths.append(path)
        return paths


def _check_inside(path: Path, folder: Path, what: str, name: str, fix: str) -> None:
    """InputError unless ``path`` (symlinks resolved) lies inside ``folder``."""
    try:
        inside = Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        inside = False
    if not inside:
        raise InputError(
            f"{what}: outside {folder} ({name}); data rows may only attach files from there: {fix}, "
            "or pass --allow-attachments-outside"
        )


def _template_folder(text: str) -> Path:
    """The folder an --attach template's fixed part names: ``invoices`` for ``invoices/{{ contract }}.pdf``."""
    cut = min(i for i in (text.find("{{"), text.find("{%")) if i >= 0)
    prefix = os.path.expanduser(text[:cut])
    folder = prefix if prefix.endswith(("/", os.sep)) else os.path.dirname(prefix)
    return Path(folder or ".").absolute()


def _attachments(request: SendRequest) -> _Attachments:
    """Check the fixed --attach files now (regular, within the size limit) and sort out the templates."""
    fixed: list[Path] = []
    templates: list[tuple[str, Path]] = []
    for item in request.attachments:
        text = str(item)
        if _is_template(text):
            templates.append((text, _template_folder(text)))
            continue
        problem = regular_file_problem(Path(item))
        if problem is not None:
            raise InputError(f"{term('--attach')} {item}: {problem}")
        fixed.append(Path(item))
    row_base = None
    if request.data_file is not None:
        row_base = Path(request.attachments_dir) if request.attachments_dir else Path(request.data_file).parent
        row_base = row_base.absolute()
        if not row_base.is_dir():
            raise InputError(f"--attachments-dir {request.attachments_dir}: no such folder; check the path")
    return _Attachments(fixed, templates, row_base, contained=not request.allow_attachments_outside)


# ---------------------------------------------------------------- main entry


def prepare_messages(
    request: SendRequest, config: Config, sender: Sender, *, now: datetime, route: Route | None = None
) -> Iterator[PreparedMessage | RowProblem]:
    """Yield one PreparedMessage per message (or a RowProblem per bad row), streaming, up to ``request.limit``.

    Raises UsageError/InputError for problems with the request as a whole
    (contradicting options, unknown template, unreadable data file, no email
    column, bad --to/--cc/--bcc/--reply-to/--attach) before the first message.
    """
    check_request(request, config)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    template = _load(request, config)
    cc = _addresses(request.cc, term("--cc"))
    bcc = _addresses(request.bcc, term("--bcc"))
    if request.reply_to:
        reply_to = [parse_address(request.reply_to, where=term("--reply-to"))]
    elif sender.reply_to:
        reply_to = [parse_address(sender.reply_to, where=f"{config.path}: senders.{sender.key}.reply_to")]
    else:
        reply_to = None
    from_addr = make_address(sender.display_name or "", sender.email)
    attachments = _attachments(request)

    local_now = now.astimezone(config.timezone)
    builtins: dict[str, Any] = {
        "sender": {"key": sender.key, "email": sender.email, "name": sender.display_name or ""},
        "now": local_now,
        "today": local_now.date().isoformat(),
    }

    plan = HeaderPlan(
        specs=merged(route.headers if route else (), template.headers, header_options(request)),
        unsubscribe=route.unsubscribe if route else None,
        auto_submitted=route.auto_submitted if route else False,
    )

    # From, Reply-To, Cc, Bcc and Date are the same in every message of the request: encoded once
    builder = MessageBuilder(from_addr=from_addr, reply_to=reply_to, cc=cc, bcc=bcc, date=now)

    def compose(
        to: list[Address],
        subject: str,
        text: str,
        html: str | None,
        attachments: list[Path],
        where: str,
        variables: Mapping[str, Any],
    ) -> PreparedEmail:
        extra: list[tuple[str, str]] = []
        if plan.specs or plan.unsubscribe or plan.auto_submitted:
            try:
                extra = plan.render(
                    lambda value, source: render_string(value, variables, where=where, source=source), where
                )
            except ValueError as exc:
                raise InputError(str(exc)) from None
        return builder.build(
            extra_headers=extra,
            to=to,
            subject=subject,
            text=text,
            html=html,
            attachments=attachments,
            message_id=make_message_id(sender.domain),
            where=where,
        )

    if request.data_file is None:
        yield from _single(request, config, template, builtins, compose, attachments)
        return

    data_file = Path(request.data_file)
    rows = read_rows(data_file)
    first = next(rows)  # read_rows raised already if there are no rows
    if request.to_column not in first.values:
        columns = ", ".join(first.values) or "(none)"
        raise InputError(
            f"{data_file}: no {request.to_column!r} column (columns: {columns}); "
            f"use {term('--to-column')} to pick another"
        )
    prepared = 0
    for row in itertools.chain([first], rows):
        try:
            message = _prepare_row(row, request, template, builtins, compose, attachments)
        except InputError as exc:
            yield RowProblem(row=row.number, label=row.label, message=str(exc))
            continue
        yield message
        prepared += 1
        if request.limit is not None and prepared >= request.limit:
            return


def _single(
    request: SendRequest,
    config: Config,
    template: MessageTemplate,
    builtins: dict[str, Any],
    compose: _Compose,
    attachments: _Attachments,
) -> Iterator[PreparedMessage | RowProblem]:
    """The one message of a request without --data: every --to and --group member in To."""
    to = _addresses(request.to, term("--to"))
    for group in request.groups:
        to.extend(_addresses(list(config.groups[group]), f"{config.path}: groups.{group}"))
    to = _dedup(to)
    variables = {
        **builtins,
        "recipient": to[0].addr_spec,
        "name": to[0].display_name,
        **request.variables,
    }
    try:
        content = render(template, variables, where=SINGLE_LABEL, from_data=False)
        paths = attachments.for_message(variables, SINGLE_LABEL, None)
        prepared = compose(to, content.subject, content.text, content.html, paths, SINGLE_LABEL, variables)
    except InputError as exc:
        yield RowProblem(row=None, label=SINGLE_LABEL, message=str(exc))
        return
    yield PreparedMessage(
        row=None,
        label=SINGLE_LABEL,
        email=prepared,
        template=request.template,
        dedup_key=_dedup_key(prepared.envelope_to, {}),
    )


_KINDS = {bool: "true/false", int: "a number", float: "a number", list: "a list", dict: "a mapping"}


def _header_text(row: DataRow, column: str) -> str | None:
    """The text of a column that becomes a header (address, name); None if absent or null.

    JSON and YAML give numbers, booleans, lists and mappings; in a header they
    would turn into Python's repr, so anything but text is an input error.
    """
    value = row.values.get(column)
    if value is None or isinstance(value, str):
        return value
    kind = _KINDS.get(type(value), f"a {type(value).__name__}")
    raise InputError(
        f"{row.label}: column {column!r} must be text, not {kind}; write the value in quotes as one string"
    )


def _prepare_row(
    row: DataRow,
    request: SendRequest,
    template: MessageTemplate,
    builtins: dict[str, Any],
    compose: _Compose,
    attachments: _Attachments,
) -> PreparedMessage:
    """One data row to one message; InputError (naming the row and field) if the row is bad."""
    column = request.to_column
    cell = _header_text(row, column)
    if cell is None or not cell.strip():
        raise InputError(f"{row.label}: column {column!r} is empty; fill in the recipient's address or remove the row")
    recipient = parse_address(cell, where=f"{row.label}: column {column!r}")

    name_cell = _header_text(row, NAME_COLUMN)
    if name_cell is not None and name_cell.strip():
        display = check_header_text(name_cell.strip(), where=f"{row.label}: column {NAME_COLUMN!r}")
        recipient = make_address(display, recipient.addr_spec)

    variables = {
        **builtins,
        "recipient": recipient.addr_spec,
        "name": recipient.display_name,
        **request.variables,
        **row.values,
    }
    content = render(template, variables, where=row.label)
    paths = attachments.for_message(variables, row.label, row)
    prepared = compose([recipient], content.subject, content.text, content.html, paths, row.label, variables)
    return PreparedMessage(
        row=row.number,
        label=row.label,
        email=prepared,
        template=request.template,
        dedup_key=_dedup_key(prepared.envelope_to, row.values),
    )
