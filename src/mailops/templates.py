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

The usual subject and body are plain text and ``{{ name }}``: those render
here by putting each value in place, as Jinja would (``_plain_pieces``), and
Jinja with its sandbox (:mod:`mailops.sandbox`) is loaded only for a template
that needs it, or to report a variable a row lacks.
"""

from __future__ import annotations

import functools
import os
import posixpath
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError, MailopsError
from .headers import HeaderSpec, mapping_specs
from .limits import RENDER_MAX_CHARS, RENDER_SECONDS
from .wording import term, variable

if TYPE_CHECKING:
    from jinja2 import Template, TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

SUBJECT_FILE = "subject.txt"
BODY_FILE = "body.txt"
HTML_FILE = "body.html"
HEADERS_FILE = "headers.yaml"
#: Templates whose file name ends in one of these are HTML: Jinja escapes the values they print.
ESCAPED_EXTENSIONS = ("html", "htm")

_UNDEFINED_RE = re.compile(r"^'(?P<name>.+)' is undefined$")
# str.splitlines() breaks on all of these; a subject must not contain any.
_LINE_BREAK_RE = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def _finalize(value: Any) -> Any:
    # A JSON null / YAML ~ is a value that is deliberately empty; printing "None" to a customer never is.
    return "" if value is None else value


class RenderLimit(Exception):
    """Rendering went past a limit (time or size); the message says which and how to change it."""


class _Budget(threading.local):
    """The render under way in this thread: its deadline and size cap (no deadline while compiling)."""

    deadline: float | None = None
    seconds: float = 0.0
    max_chars: int | None = None


_BUDGET = _Budget()
# printf-style conversions ('%10d', '%.*f') and str.format fields ('{:>10}'): their width and precision
_PRINTF_RE = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS_RE = re.compile(r"\d+")
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})


def _max_chars() -> int:
    return _BUDGET.max_chars if _BUDGET.max_chars is not None else int(RENDER_MAX_CHARS.value())


def _check_time() -> None:
    if _BUDGET.deadline is not None and time.monotonic() > _BUDGET.deadline:
        raise RenderLimit(
            f"rendering took longer than {_BUDGET.seconds:g} s; simplify the template "
            f"(or raise {RENDER_SECONDS.variable})"
        )


def _check_size(size: int) -> None:
    limit = _max_chars()
    if size > limit:
        raise RenderLimit(
            f"would build a text of {size:,} characters, over the limit of {limit:,}; fix the template "
            f"(or raise {RENDER_MAX_CHARS.variable})"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_width(number: str | int) -> None:
    """A padding width or precision: a number no larger than the size cap (checked without int() on huge text)."""
    if isinstance(number, str):
        if len(number) > 12:
            _check_size(10**12)
        number = int(number)
    _check_size(number)


def _check_printf(fmt: str, args: Any) -> None:
    star = False
    for match in _PRINTF_RE.finditer(fmt):
        for part in match.groups()[:2]:
            if part == "*":
                star = True
            elif part:
                _check_width(part)
    if star:
        for arg in args if isinstance(args, tuple) else (args,):
            if _is_int(arg):
                _check_width(arg)


def _check_format(fmt: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for field_spec in re.findall(r"\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}", fmt):
        _name, colon, spec = field_spec.partition(":")
        if not colon:
            continue
        for digits in _DIGITS_RE.findall(spec):
            _check_width(digits)
        if "{" in spec:  # a nested width such as '{:{}}': its value is an argument
            for arg in (*args, *kwargs.values()):
                if _is_int(arg):
                    _check_width(arg)


def _check_replace(text: str, old: Any, new: Any) -> None:
    if isinstance(old, str) and isinstance(new, str) and len(new) > len(old):
        count = text.count(old) if old else len(text) + 1
        _check_size(len(text) + count * (len(new) - len(old)))


#: What a template prints when it is nothing but text and ``{{ name }}`` (the usual subject and body):
#: (False, text) for a stretch of text, (True, name) for a variable.
Pieces = tuple[tuple[bool, str], ...]
# Names a template's top level does not look up among the variables (``self`` is the template itself).
_SPECIAL_NAMES = frozenset({"self", "caller", "varargs", "kwargs", "loop"})
_MISSING = object()


# {{ name }}: the only expression a plain template holds (spaces only; anything else goes to Jinja)
_PLAIN_VARIABLE_RE = re.compile(r"\{\{ *([A-Za-z_][A-Za-z0-9_]*) *\}\}")
# Names Jinja reads as constants or operators, never as variables (or that are special: _SPECIAL_NAMES)
_KEYWORDS = frozenset({"true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else"})


def _plain_pieces(source: str) -> Pieces | None:
    """The pieces of ``source`` if it is text and ``{{ name }}`` alone, read without Jinja; None otherwise.

    Deliberately narrow, so that it never reads a text differently from
    Jinja: no ``{%`` or ``{#`` anywhere, no brace in the text between the
    variables, names in ASCII with spaces around them only. Line ends become
    ``\n`` as Jinja's lexer makes them. A template this refuses may still
    render without Jinja's runtime (``sandbox._pieces``), once Jinja has
    parsed it. tests/test_templates.py checks it against Jinja's own parser.
    """
    if "{%" in source or "{#" in source:
        return None
    pieces: list[tuple[bool, str]] = []
    at = 0
    while True:  # bounded: each turn moves past one {{ name }} or ends
        start = source.find("{{", at)
        text = source[at:] if start < 0 else source[at:start]
        if "{" in text or "}" in text:
            return None
        if text:
            pieces.append((False, text.replace("\r\n", "\n").replace("\r", "\n")))
        if start < 0:
            return tuple(pieces)
        match = _PLAIN_VARIABLE_RE.match(source, start)
        if match is None or match.group(1) in _KEYWORDS or match.group(1) in _SPECIAL_NAMES:
            return None
        pieces.append((True, match.group(1)))
        at = match.end()


def _render_pieces(pieces: Pieces, variables: Mapping[str, Any]) -> str | None:
    """The text of a template made of ``pieces``; None if a variable is missing (Jinja then says which)."""
    out: list[str] = []
    for is_name, text in pieces:
        if not is_name:
            out.append(text)
            continue
        value = variables.get(text, _MISSING)
        if value is _MISSING:
            return None
        out.append(str(_finalize(value)))
    return "".join(out)


class _Part:
    """One template text (subject, body, HTML body, attachment path): its pieces, rendered without Jinja when it
    is plain, and its Jinja template, compiled when first needed if it is plain (else at once)."""

    __slots__ = ("_compile", "_template", "pieces")

    def __init__(
        self, pieces: Pieces | None, template: Template | None, compile: Callable[[], Template] | None = None
    ) -> None:
        self.pieces = pieces  # None: render with Jinja
        self._template = template
        self._compile = compile

    @property
    def template(self) -> Template:
        """The compiled Jinja template."""
        if self._template is None:
            assert self._compile is not None
            self._template = self._compile()
        return self._template


def _compile(
    env: Callable[[], ImmutableSandboxedEnvironment], source: str, name: str | None, filename: str | None
) -> _Part:
    """The part for ``source``: plain ones without loading Jinja, the rest compiled in ``env()`` now
    (TemplateSyntaxError if invalid)."""
    # An HTML template escapes its values (sandbox.make_env); that stays Jinja's work
    escaped = name is not None and name.lower().endswith(tuple(f".{ext}" for ext in ESCAPED_EXTENSIONS))
    pieces = None if escaped else _plain_pieces(source)
    if pieces is not None:
        return _Part(pieces, None, lambda: _jinja().compile_text(env(), source, name, filename)[0])
    template, pieces = _jinja().compile_text(env(), source, name, filename)
    return _Part(pieces, template)


def _jinja() -> Any:
    """:mod:`mailops.sandbox`, imported when a template needs Jinja."""
    from . import sandbox

    return sandbox


def _syntax_error() -> type[TemplateSyntaxError]:
    """Jinja's TemplateSyntaxError, for an ``except`` clause (evaluated only when something was raised)."""
    from jinja2 import TemplateSyntaxError

    return TemplateSyntaxError


@dataclass(frozen=True)
class MessageTemplate:
    """A compiled subject, text body and optional HTML body; compile once, render per row."""

    name: str | None  # folder name, or None for --subject/--body
    subject_source: str  # label used in messages, e.g. "renewal/subject.txt" or "--subject"
    body_source: str
    html_source: str | None
    _subject: _Part = field(repr=False, compare=False)
    _body: _Part | None = field(repr=False, compare=False)  # None: an HTML-only template (text generated)
    _html: _Part | None = field(default=None, repr=False, compare=False)
    headers: tuple[HeaderSpec, ...] = ()  # from the folder's headers.yaml; values rendered per message


@dataclass(frozen=True)
class RenderedContent:
    """What one row renders to: a one-line subject, the text body and the HTML body if any."""

    subject: str
    text: str
    html: str | None


def list_templates(templates_dir: Path) -> list[str]:
    """Names of the template folders (subject.txt and body.txt or body.html), sorted; [] if the folder is missing."""
    try:
        entries = list(Path(templates_dir).iterdir())
    except OSError:
        return []
    return sorted(
        entry.name
        for entry in entries
        if entry.is_dir()
        and (entry / SUBJECT_FILE).is_file()
        and ((entry / BODY_FILE).is_file() or (entry / HTML_FILE).is_file())
    )


def unknown_template_message(templates_dir: Path, name: str) -> str:
    """The one-line explanation for a template name that does not exist (shared with the request checks)."""
    available = ", ".join(list_templates(templates_dir)) or "(none)"
    return (
        f"unknown template {name!r}; available templates: {available} (in {templates_dir}); "
        f"fix {term('--template')} or create {Path(templates_dir) / name}/{SUBJECT_FILE} and {BODY_FILE} "
        f"(or {HTML_FILE})"
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
    if not (folder / SUBJECT_FILE).is_file():
        raise InputError(f"{folder}: template has no {SUBJECT_FILE}; create {folder / SUBJECT_FILE}")
    has_html = (folder / HTML_FILE).is_file()
    has_text = (folder / BODY_FILE).is_file()
    if not has_text and not has_html:
        raise InputError(
            f"{folder}: template has no {BODY_FILE} or {HTML_FILE}; create {folder / BODY_FILE} "
            f"(or {HTML_FILE}: the text part is then generated from it)"
        )

    @functools.cache
    def env() -> ImmutableSandboxedEnvironment:
        from jinja2 import FileSystemLoader

        # utf-8-sig: editors on Windows add a BOM, which would otherwise start the subject.
        made: ImmutableSandboxedEnvironment = _jinja().make_env(
            FileSystemLoader(str(templates_dir), encoding="utf-8-sig")
        )
        return made

    def compile_one(filename: str) -> _Part:
        source = f"{name}/{filename}"
        try:
            # read as Jinja's FileSystemLoader reads it (text mode: universal newlines; utf-8-sig drops a BOM)
            with open(folder / filename, encoding="utf-8-sig") as handle:
                text = handle.read()
            return _compile(env, text, source, os.path.normpath(posixpath.join(str(templates_dir), name, filename)))
        except _syntax_error() as exc:
            raise InputError(_syntax_message(exc, str(folder / filename))) from None
        except UnicodeDecodeError:
            raise InputError(f"{folder / filename}: not UTF-8 text; save the file as UTF-8") from None
        except FileNotFoundError:  # removed between the check above and now
            raise InputError(f"{folder}: template has no {filename}; create {folder / filename}") from None
        except OSError as exc:
            raise InputError(f"{folder / filename}: cannot read: {exc.strerror or exc}; check the file") from None

    return MessageTemplate(
        headers=_load_headers(folder, name),
        name=name,
        subject_source=f"{name}/{SUBJECT_FILE}",
        body_source=f"{name}/{BODY_FILE}" if has_text else f"{name}/{HTML_FILE} (text generated)",
        html_source=f"{name}/{HTML_FILE}" if has_html else None,
        _subject=compile_one(SUBJECT_FILE),
        _body=compile_one(BODY_FILE) if has_text else None,
        _html=compile_one(HTML_FILE) if has_html else None,
    )


def _load_headers(folder: Path, name: str) -> tuple[HeaderSpec, ...]:
    """The optional ``headers.yaml`` of a template folder: a mapping of header names to Jinja values."""
    path = folder / HEADERS_FILE
    if not path.is_file():
        return ()
    import yaml

    from .files import read_text_file
    from .limits import BODY_FILE_MAX_BYTES

    text = read_text_file(path, BODY_FILE_MAX_BYTES)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{line}: not valid YAML; write one 'Name: value' per line") from None
    try:
        return tuple(mapping_specs(raw, str(path), sep=": "))
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _compile_inline(text: str, source: str) -> _Part:
    try:
        return _compile(_inline_env, text, None, None)
    except _syntax_error() as exc:
        raise InputError(_syntax_message(exc, source)) from None


def inline_template(subject: str, body: str, *, body_source: str | None = None) -> MessageTemplate:
    """Compile a subject and a plain-text body given on the command line (or read from --body-file)."""
    body_source = body_source or term("--body")
    return MessageTemplate(
        name=None,
        subject_source=term("--subject"),
        body_source=body_source,
        html_source=None,
        _subject=_compile_inline(subject, term("--subject")),
        _body=_compile_inline(body, body_source),
    )


def _inline_env() -> ImmutableSandboxedEnvironment:
    """The environment of inline templates (--subject/--body, attachment paths), when one needs Jinja."""
    env: ImmutableSandboxedEnvironment = _jinja().inline_env()
    return env


def _render_error(exc: Exception, *, where: str, source: str, from_data: bool) -> InputError:
    """Turn anything a template raised while rendering into one operator-facing line."""
    from jinja2 import TemplateError, TemplateNotFound, TemplateSyntaxError, UndefinedError
    from jinja2.exceptions import SecurityError

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
            fix = f"add a {var!r} column or pass {variable(var)}" if from_data else f"pass {variable(var)}"
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


@contextmanager
def _budget() -> Iterator[None]:
    """A deadline and size cap for the renders inside (one message); nested uses keep the outer one."""
    if _BUDGET.deadline is not None:
        yield
        return
    seconds = RENDER_SECONDS.value()
    _BUDGET.seconds, _BUDGET.max_chars = seconds, int(RENDER_MAX_CHARS.value())
    _BUDGET.deadline = time.monotonic() + seconds
    try:
        yield
    finally:
        _BUDGET.deadline = _BUDGET.max_chars = None


def _render_one(part: _Part, variables: Mapping[str, Any], *, where: str, source: str, from_data: bool) -> str:
    if _BUDGET.deadline is None:  # on its own (an attachment path), not one part of render(): a budget of its own
        with _budget():
            return _render_one(part, variables, where=where, source=source, from_data=from_data)
    try:
        limit = _max_chars()
        if part.pieces is not None:
            text = _render_pieces(part.pieces, variables)
            if text is not None:
                if len(text) > limit:
                    raise RenderLimit(
                        f"renders more than {limit:,} characters; fix the template "
                        f"(or raise {RENDER_MAX_CHARS.variable})"
                    )
                _check_time()
                return text
        chunks: list[str] = []
        size = 0
        for chunk in part.template.generate(variables):  # streamed: a huge or endless output stops at the cap
            size += len(chunk)
            if size > limit:
                raise RenderLimit(
                    f"renders more than {limit:,} characters; fix the template (or raise {RENDER_MAX_CHARS.variable})"
                )
            _check_time()
            chunks.append(chunk)
        return "".join(chunks)
    except (RenderLimit, RecursionError, MemoryError) as exc:
        raise _limit_error(exc, where=where, source=source) from None
    except MailopsError:
        raise  # a bad limit variable
    except Exception as exc:  # noqa: BLE001 - template code is operator input; every failure is an input error
        raise _render_error(exc, where=where, source=source, from_data=from_data) from None


def _limit_error(exc: BaseException, *, where: str, source: str) -> InputError:
    if isinstance(exc, RecursionError):
        text = "nests too deeply (a macro calling itself without end?); fix the template"
    elif isinstance(exc, MemoryError):
        text = f"ran out of memory; fix the template (or lower {RENDER_MAX_CHARS.variable})"
    else:
        text = str(exc)
    return InputError(f"{where}: template {source}: {text}")


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
    missing variable can suggest adding a column. The three parts share one
    deadline (``MAILOPS_RENDER_SECONDS``); each may hold up to
    ``MAILOPS_RENDER_MAX_CHARS`` characters.
    """
    with _budget():
        return _render_parts(template, variables, where=where, from_data=from_data)


def _render_parts(
    template: MessageTemplate, variables: Mapping[str, Any], *, where: str, from_data: bool
) -> RenderedContent:
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
    text = ""
    if template._body is not None:
        text = _render_one(template._body, variables, where=where, source=template.body_source, from_data=from_data)
    html = None
    if template._html is not None:
        html = _render_one(
            template._html, variables, where=where, source=template.html_source or "", from_data=from_data
        )
        if not text.strip():
            # An empty text alternative next to HTML reads as spam (MPART_ALT_DIFF) and as nothing in a
            # text client: generate it from the HTML.
            text = _generated_text(html, where=where, source=template.html_source or "")
    return RenderedContent(subject=subject, text=text, html=html)


def _generated_text(html: str, *, where: str, source: str) -> str:
    """The text part made from a rendered HTML body; InputError naming the template if it cannot be."""
    from .htmltext import html_to_text

    try:
        text = html_to_text(html)
    except (RecursionError, MemoryError) as exc:
        raise _limit_error(exc, where=where, source=source) from None
    except Exception as exc:  # noqa: BLE001 - the converter's parser errors: the HTML is the cause
        raise InputError(
            f"{where}: template {source}: cannot make a text part from the HTML ({type(exc).__name__}: {exc}); "
            "fix the HTML or write a body.txt"
        ) from None
    _check_time()
    return text


@functools.lru_cache(maxsize=256)
def _cached_inline(text: str) -> _Part:
    # Bounded: per-row strings (attachment paths) repeat the same pattern, but a file may hold many distinct ones.
    return _compile(_inline_env, text, None, None)


def render_string(text: str, variables: Mapping[str, Any], *, where: str, source: str) -> str:
    """Render a short sandboxed text template such as a per-row attachment path; ``source`` labels errors."""
    if "{" not in text:  # the common case, a plain path: skip Jinja entirely
        return text
    try:
        compiled = _cached_inline(text)
    except _syntax_error() as exc:
        raise InputError(
            f"{where}: template {source}: template syntax error: {(exc.message or '').rstrip('.')}; fix the value"
        ) from None
    return _render_one(compiled, variables, where=where, source=source, from_data=True)
