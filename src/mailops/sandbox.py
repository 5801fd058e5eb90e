"""The Jinja side of templates: the immutable sandbox with bounds on size and time, and compiling.

Imported only when a template needs Jinja: one that is more than text and
``{{ name }}`` (see ``templates._plain_pieces``), or one such plain template
when a row lacks one of its variables (Jinja then says which). Loading Jinja
costs a mail merge 30-50 ms of CPU before its first message; the usual
subject and body do without it. The size and time checks the sandbox calls
live in :mod:`mailops.templates` (rendering uses them too).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, Template, nodes, select_autoescape
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from jinja2.utils import Namespace

from .templates import (
    _PADDING_METHODS,
    _SPECIAL_NAMES,
    ESCAPED_EXTENSIONS,
    Pieces,
    _check_format,
    _check_printf,
    _check_replace,
    _check_size,
    _check_time,
    _check_width,
    _finalize,
    _is_int,
)


class _BoundedRange:
    """``range()`` for templates: the sandbox's size cap, and the deadline checked while looping."""

    def __init__(self, *args: Any) -> None:
        self._range = safe_range(*args)

    def __iter__(self) -> Iterator[int]:
        for index, value in enumerate(self._range):
            if not index & 1023:
                _check_time()
            yield value

    def __reversed__(self) -> Iterator[int]:
        backwards = _BoundedRange()
        backwards._range = self._range[::-1]
        return iter(backwards)

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __contains__(self, value: object) -> bool:
        return value in self._range

    def __repr__(self) -> str:
        return repr(self._range)


class _BoundedNamespace(Namespace):
    """``namespace()`` whose attributes may not grow past the size cap: the one place a loop can accumulate."""

    def __setitem__(self, name: str, value: Any) -> None:
        if isinstance(value, (str, list, tuple)):
            _check_size(len(value))
        super().__setitem__(name, value)


class _BoundedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` so that the joined text is checked against the size cap (Jinja joins it inline)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_text(")
        super().visit_Concat(node, frame)
        self.write(")")


def _bounded_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """The built-in filters that can build a text far larger than their input, with their sizes checked first."""
    center, indent, fmt, replace = filters["center"], filters["indent"], filters["format"], filters["replace"]
    join = filters["join"]

    def bounded_center(value: Any, width: int = 80) -> Any:
        _check_width(width)
        return center(value, width)

    def bounded_indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
        lines = str(value).count("\n") + 1
        _check_size(len(str(value)) + lines * (len(width) if isinstance(width, str) else int(width)))
        return indent(value, width, *args, **kwargs)

    def bounded_format(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_printf(str(value), args if len(args) != 1 else args[0])
        return fmt(value, *args, **kwargs)

    bounded_replace_needs_ctx = getattr(replace, "jinja_pass_arg", None)

    def bounded_replace(*args: Any, **kwargs: Any) -> Any:
        params = args[1:] if bounded_replace_needs_ctx is not None else args
        if len(params) >= 3:
            _check_replace(str(params[0]), params[1], params[2])
        return replace(*args, **kwargs)

    if bounded_replace_needs_ctx is not None:
        bounded_replace.jinja_pass_arg = bounded_replace_needs_ctx  # type: ignore[attr-defined]  # Jinja's marker

    def bounded_join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        if isinstance(value, (list, tuple)):
            texts = sum(len(item) for item in value if isinstance(item, str))
            _check_size(texts + len(str(d)) * max(len(value) - 1, 0))
        return join(eval_ctx, value, d, attribute)

    bounded_join.jinja_pass_arg = join.jinja_pass_arg  # type: ignore[attr-defined]  # Jinja's pass_* marker
    return {
        "center": bounded_center,
        "indent": bounded_indent,
        "format": bounded_format,
        "replace": bounded_replace,
        "join": bounded_join,
    }


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with bounds on what an expression may build and on how long rendering runs.

    Jinja's sandbox keeps templates away from Python internals but not from
    ``'x' * 10**10`` or a loop of 10**10 turns. So the operators that can
    build huge values (``*``, ``**``, ``+``, ``%``) and the calls that can
    (padding, ``format``, ``replace``) check the size of the result before
    computing it; what can accumulate (``namespace()`` attributes, macro
    arguments, ``~`` and ``join``) is checked as it is stored, passed or
    joined; every call and every 1024 turns of ``range()`` check the
    deadline; and :func:`_render_one` streams the output (``generate()``),
    checking its length and the deadline at every chunk. A loop that neither
    calls nor outputs nor uses ``range()`` (over a long list from a data
    row) is bounded by that list's size.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.globals["range"] = _BoundedRange
        self.globals["namespace"] = _BoundedNamespace
        self.filters.update(_bounded_filters(self.filters))

    @staticmethod
    def checked_text(value: Any) -> Any:
        """A text joined with ``~``, once its size is checked."""
        _check_size(len(value))
        return value

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Check the size of what ``left OPERATOR right`` would build, then compute it."""
        _check_time()
        sized = (str, list, tuple)
        if operator == "*":
            if _is_int(right) and isinstance(left, sized):
                _check_size(len(left) * right)
            elif _is_int(left) and isinstance(right, sized):
                _check_size(len(right) * left)
        elif operator == "**":
            if _is_int(left) and _is_int(right) and abs(left) > 1 and right > 0:
                _check_size(int(right * math.log10(abs(left))))  # digits of the result
        elif operator == "+":
            if isinstance(left, sized) and isinstance(right, sized):
                _check_size(len(left) + len(right))
        elif operator == "%" and isinstance(left, str):
            _check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Check the deadline, the size of the arguments (a macro calling itself with ever longer text) and
        the size a text method would build, then call."""
        _check_time()
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, (str, list, tuple)):
                _check_size(len(arg))
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format in a function of its own
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            name = getattr(method, "__name__", "")
            if name in _PADDING_METHODS:
                for arg in (*args, *kwargs.values()):
                    if _is_int(arg):
                        _check_width(arg)
            elif name in ("format", "format_map"):
                _check_format(owner, args, kwargs)
            elif name == "replace" and len(args) >= 2:
                _check_replace(owner, args[0], args[1])
        return super().call(__context, __obj, *args, **kwargs)


def make_env(loader: FileSystemLoader | None = None) -> ImmutableSandboxedEnvironment:
    """The sandboxed environment every template renders in (``loader``: a template folder's, for includes)."""
    return _BoundedSandbox(
        loader=loader,
        undefined=StrictUndefined,
        # Only .html/.htm files are escaped: plain text must keep "&" and "<" as typed.
        autoescape=select_autoescape(enabled_extensions=ESCAPED_EXTENSIONS, default_for_string=False, default=False),
        keep_trailing_newline=True,
        finalize=_finalize,
        auto_reload=False,
    )


@functools.cache
def inline_env() -> ImmutableSandboxedEnvironment:
    """The environment of inline templates (--subject/--body, attachment paths): never HTML, no loader."""
    return make_env()


def _pieces(ast: nodes.Template, autoescape: bool) -> Pieces | None:
    """The pieces of a template that only prints text and variables, else None (it needs Jinja to render).

    Such a template renders to its text with ``str(value)`` (None as "") in place
    of each variable, exactly as Jinja's compiled code does, but without a
    context object, a generator and a deadline check per piece: for a mail
    merge that is most of the time spent rendering. Its output is at most its
    text plus its values, so the size and time bounds need checking only once.
    """
    if autoescape:  # HTML: values are escaped; leave that to Jinja
        return None
    pieces: list[tuple[bool, str]] = []
    for node in ast.body:
        if type(node) is not nodes.Output:
            return None
        for child in node.nodes:
            if type(child) is nodes.TemplateData:
                pieces.append((False, child.data))
            elif type(child) is nodes.Name and child.ctx == "load" and child.name not in _SPECIAL_NAMES:
                pieces.append((True, child.name))
            else:
                return None
    return tuple(pieces)


def compile_text(
    env: ImmutableSandboxedEnvironment, source: str, name: str | None, filename: str | None
) -> tuple[Template, Pieces | None]:
    """``source`` parsed and compiled as the environment's loader would (TemplateSyntaxError if it is invalid),
    with its pieces if it only prints text and variables (see :func:`_pieces`)."""
    ast = env.parse(source, name, filename)
    autoescape = env.autoescape(name) if callable(env.autoescape) else bool(env.autoescape)
    pieces = _pieces(ast, autoescape)
    template = env.template_class.from_code(env, env.compile(ast, name, filename), env.make_globals(None), None)
    return template, pieces
