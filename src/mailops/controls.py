"""Control characters: the one rule for header values, and escaping for what is printed to a terminal.

Header values come from the operator (config, options) and from data files
that someone else may control. A control character in a header is at best
garbage and at worst header injection (CR, LF) or a terminal escape sequence
replayed by every tool that shows the header, so every header value passes
:func:`header_problem`, whatever its source. Text read back from the database
(subjects, recipients, server replies) is shown with :func:`for_terminal`, so
nothing stored can drive the operator's terminal.
"""

from __future__ import annotations

import re

# C0 except TAB, DEL, C1, and the Unicode line and paragraph separators (str.splitlines() breaks there).
_HEADER_FORBIDDEN_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")

# For terminals, also the bidirectional overrides and isolates: they reorder what is shown (Trojan Source).
_TERMINAL_UNSAFE_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_TERMINAL_UNSAFE_KEEP_LINES_RE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def header_problem(value: str) -> str | None:
    """None if ``value`` may be a header value, else one phrase naming the first control character and the fix.

    The rule is the same for every header and every source: C0 controls except
    TAB, DEL, C1 controls, U+2028 and U+2029 are refused.
    """
    match = _HEADER_FORBIDDEN_RE.search(value)
    if match is None:
        return None
    char = match.group()
    return (
        f"the control character {char!r} is not allowed in a header (subject, name, address); remove it from the value"
    )


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: str, *, keep_newlines: bool = False) -> str:
    r"""``text`` with every control character shown as an escape (ESC as ``\x1b``), safe to print.

    ``keep_newlines`` keeps LF for multi-line text such as a previewed body;
    otherwise the result is always one line.
    """
    pattern = _TERMINAL_UNSAFE_KEEP_LINES_RE if keep_newlines else _TERMINAL_UNSAFE_RE
    return pattern.sub(_escape, text)


def json_for_terminal(text: str) -> str:
    r"""JSON text with DEL, C1 and the Unicode separators written as ``\uXXXX`` (the same JSON value).

    ``json.dumps`` already escapes C0 controls; with ``ensure_ascii=False`` it
    leaves these raw, and a terminal may act on them.
    """
    return _JSON_UNSAFE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_JSON_UNSAFE_RE = re.compile("[\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
