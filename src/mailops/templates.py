"""Jinja2 message templates: loading, compiling once, and rendering per data row.

Templates are written by operators but the values they render come from
customers' data files, so everything renders in Jinja's *immutable* sandbox
(no access to Python internals, no mutating shared values such as ``sender``
between rows). ``StrictUndefined`` turns a missing variable into an error that
names the variable, the template file and the row: a silent blank in a
customer's email is worse than a stopped run.

A template is a folder ``TEMPLATES_DIR/NAME/`` holding ``subject.txt``,
``body.txt`` and optionally ``body.html``. The folder is also the loader root,
so templates may ``{% include %}`` or ``{% extends %}`` shared files there.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    select_autoescape,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import InputError

SUBJECT_FILE = "subject.txt"
BODY_FILE = "body.txt"
HTML_FILE = "body.html"

_UNDEFINED_RE = re.compile(r"^'(?P<name>.+)' is undefined$")
# str.splitlines() breaks on all of these; a subject must not contain any.
_LINE_BREAK_RE = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _finalize(value: Any) -> Any:
    # A JSON null / YAML ~ is a value that is deliberately empty; printing "None" to a customer never is.
    return "" if value is None else value


def _make_env(loader: FileSystemLoader | None = None) -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        loader=loader,
        undefined=StrictUndefined,
        # Only .html/.htm files are escaped: plain text must keep "&" and "<" as typed.
        autoescape=select_autoescape(enabled_extensions=("html", "htm"), default_for_string=False, default=False),
        keep_trailing_newline=True,
        finalize=_finalize,
        auto_reload=False,
    )


# Inline templates (--subject/--body, per-row attachment paths) are never HTML.
_INLINE_ENV = _make_env()


@dataclass(frozen=True)
class MessageTemplate:
    """A compiled subject, text body and optional HTML body; compile once, render per row."""

    name: str | None  # folder name, or None for --subject/--body
    subject_source: str  # label used in messages, e.g. "renewal/subject.txt" or "--subject"
    body_source: str
    html_source: str | None
    _subject: Template = field(repr=False, compare=False)
    _body: Template = field(repr=False, compare=False)
    _html: Template | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class RenderedContent:
    """What one row renders to: a one-line subject, the text body and the HTML body if any."""

    subject: str
    text: str
    html: str | None


def list_templates(templates_dir: Path) -> list[str]:
    """Names of the template folders (those with subject.txt and body.txt), sorted; [] if the folder is missing."""
    try:
        entries = list(Path(templates_dir).iterdir())
    except OSError:
        return []
    return sorted(
        entry.name
        for entry in entries
        if entry.is_dir() and (entry / SUBJECT_FILE).is_file() and (entry / BODY_FILE).is_file()
    )


def unknown_template_message(templates_dir: Path, name: str) -> str:
    """The one-line explanation for a template name that does not exist (shared with the request checks)."""
    available = ", ".join(list_templates(templates_dir)) or "(none)"
    return (
        f"unknown template {name!r}; available templates: {available} (in {templates_dir}); "
        f"fix --template or create {Path(templates_dir) / name}/{SUBJECT_FILE} and {BODY_FILE}"
    )


def _syntax_message(exc: TemplateSyntaxError, source: str) -> str:
    where = exc.filename or source
    return f"{where} line {exc.lineno}: template syntax error: {(exc.message or '').rstrip('.')}; fix the template"


def load_template(templates_dir: Path, name: str) -> MessageTemplate:
    """Compile the template folder ``templates_dir/name``; InputError if it is unknown, incomplete or invalid."""
    templates_dir = Path(templates_dir)
    # A name is one folder, never a path: "../x" must not escape the templates folder.
    if not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise InputError(unknown_template_message(templates_dir, name))
    folder = templates_dir / name
    if not folder.is_dir():
        raise InputError(unknown_template_message(templates_dir, name))
    for required in (SUBJECT_FILE, BODY_FILE):
        if not (folder / required).is_file():
            raise InputError(f"{folder}: template has no {required}; create {folder / required}")

    # utf-8-sig: editors on Windows add a BOM, which would otherwise start the subject.
    env = _make_env(FileSystemLoader(str(templates_dir), encoding="utf-8-sig"))
    has_html = (folder / HTML_FILE).is_file()

    def compile_one(filename: str) -> Template:
        source = f"{name}/{filename}"
        try:
            return env.get_template(source)
        except TemplateSyntaxError as exc:
            raise InputError(_syntax_message(exc, str(folder / filename))) from None
        except UnicodeDecodeError:
            raise InputError(f"{folder / filename}: not UTF-8 text; save the file as UTF-8") from None
        except TemplateNotFound:  # removed between the check above and now
            raise InputError(f"{folder}: template has no {filename}; create {folder / filename}") from None
        except OSError as exc:
            raise InputError(f"{folder / filename}: cannot read: {exc.strerror or exc}; check the file") from None

    return MessageTemplate(
        name=name,
        subject_source=f"{name}/{SUBJECT_FILE}",
        body_source=f"{name}/{BODY_FILE}",
        html_source=f"{name}/{HTML_FILE}" if has_html else None,
        _subject=compile_one(SUBJECT_FILE),
        _body=compile_one(BODY_FILE),
        _html=compile_one(HTML_FILE) if has_html else None,
    )


def _compile_inline(text: str, source: str) -> Template:
    try:
        return _INLINE_ENV.from_string(text)
    except TemplateSyntaxError as exc:
        raise InputError(_syntax_message(exc, source)) from None


def inline_template(subject: str, body: str, *, body_source: str = "--body") -> MessageTemplate:
    """Compile a subject and a plain-text body given on the command line (or read from --body-file)."""
    return MessageTemplate(
        name=None,
        subject_source="--subject",
        body_source=body_source,
        html_source=None,
        _subject=_compile_inline(subject, "--subject"),
        _body=_compile_inline(body, body_source),
    )


def _render_error(exc: Exception, *, where: str, source: str, from_data: bool) -> InputError:
    """Turn anything a template raised while rendering into one operator-facing line."""
    prefix = f"{where}: template {source}"
    if isinstance(exc, SecurityError):
        return InputError(
            f"{prefix}: blocked by the sandbox: {str(exc).rstrip('.')}; "
            "templates may not reach Python internals or change values, remove that expression"
        )
    if isinstance(exc, UndefinedError):
        match = _UNDEFINED_RE.match(str(exc))
        if match:
            var = match.group("name")
            fix = f"add a {var!r} column or pass --var {var}=..." if from_data else f"pass --var {var}=..."
            return InputError(f"{prefix}: variable {var!r} is not defined; {fix}")
        return InputError(f"{prefix}: {exc}; check the name in the template and in the data")
    if isinstance(exc, TemplateSyntaxError):  # from an {% include %}d file, compiled on first use
        return InputError(_syntax_message(exc, source))
    if isinstance(exc, TemplateNotFound):
        return InputError(f"{prefix}: included template {exc.name!r} not found; fix the include or create the file")
    if isinstance(exc, TemplateError):
        return InputError(f"{prefix}: {exc}; fix the template")
    # Filters and operators raise plain Python errors (e.g. "a" + 1); the template is the cause.
    return InputError(f"{prefix}: error while rendering: {type(exc).__name__}: {exc}; fix the template or the data")


def _render_one(template: Template, variables: Mapping[str, Any], *, where: str, source: str, from_data: bool) -> str:
    try:
        return template.render(variables)
    except Exception as exc:  # noqa: BLE001 - template code is operator input; every failure is an input error
        raise _render_error(exc, where=where, source=source, from_data=from_data) from None


def _value_breaking_line(subject: str, variables: Mapping[str, Any]) -> str | None:
    """The name of a variable (a data column, usually) whose line-broken text is in ``subject``, if any."""
    for key, value in variables.items():
        if isinstance(value, str) and _LINE_BREAK_RE.search(value.strip()) and value.strip() in subject:
            return str(key)
    return None


def render(
    template: MessageTemplate,
    variables: Mapping[str, Any],
    *,
    where: str,
    from_data: bool = True,
) -> RenderedContent:
    """Render subject, text and HTML for one row; ``where`` labels errors ("customers.csv row 3" or "message").

    ``from_data`` says whether a data file supplies variables, so the fix for a
    missing variable can suggest adding a column.
    """
    subject = _render_one(
        template._subject, variables, where=where, source=template.subject_source, from_data=from_data
    ).strip()
    if _LINE_BREAK_RE.search(subject):
        culprit = _value_breaking_line(subject, variables)
        if culprit is not None:
            raise InputError(
                f"{where}: {culprit!r} holds a line break and the subject ({template.subject_source}) uses it; "
                f"a subject must be one line: remove the line break from {culprit!r}"
            )
        raise InputError(
            f"{where}: template {template.subject_source}: the subject must be one line but renders with a line "
            "break; remove line breaks from the subject template and from the values it uses"
        )
    text = _render_one(template._body, variables, where=where, source=template.body_source, from_data=from_data)
    html = None
    if template._html is not None:
        html = _render_one(
            template._html, variables, where=where, source=template.html_source or "", from_data=from_data
        )
    return RenderedContent(subject=subject, text=text, html=html)


@functools.lru_cache(maxsize=256)
def _cached_inline(text: str) -> Template:
    # Bounded: per-row strings (attachment paths) repeat the same pattern, but a file may hold many distinct ones.
    return _INLINE_ENV.from_string(text)


def render_string(text: str, variables: Mapping[str, Any], *, where: str, source: str) -> str:
    """Render a short sandboxed text template such as a per-row attachment path; ``source`` labels errors."""
    if "{" not in text:  # the common case, a plain path: skip Jinja entirely
        return text
    try:
        compiled = _cached_inline(text)
    except TemplateSyntaxError as exc:
        raise InputError(
            f"{where}: template {source}: template syntax error: {(exc.message or '').rstrip('.')}; fix the value"
        ) from None
    return _render_one(compiled, variables, where=where, source=source, from_data=True)
