"""Bounds on what a data file or a template can make mailops spend: time, memory, bytes read.

Data files come from exports someone else controls and templates render
their values, so each resource they drive has a limit with a default that no
ordinary mail comes near. The operator changes one with an environment
variable (read when it is needed, so a bad value is one error line naming
the variable and its allowed range).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

MB = 1024 * 1024


@dataclass(frozen=True)
class Limit:
    """One limit: its variable, default, allowed range and unit (for messages)."""

    variable: str
    default: float
    low: float
    high: float
    unit: str  # "seconds", "characters", "bytes"
    whole: bool = True  # only whole numbers

    def value(self) -> float:
        """The limit in force: the environment variable when set (checked), else the default."""
        raw = os.environ.get(self.variable)
        if raw is None or not raw.strip():
            return self.default
        try:
            number = int(raw) if self.whole else float(raw)
        except ValueError:
            number = None
        if number is None or not (self.low <= number <= self.high):
            raise UsageError(
                f"{self.variable}: must be a {'whole ' if self.whole else ''}number of {self.unit} from "
                f"{self.low:,.{0 if self.whole else 1}f} to {self.high:,.0f} (got {raw!r}); fix or unset it"
            )
        return number


#: Wall-clock time to render one message (subject, text and HTML) from its template.
RENDER_SECONDS = Limit("MAILOPS_RENDER_SECONDS", 10.0, 0.1, 3600, "seconds", whole=False)
#: Characters one rendered part (subject, text, HTML, attachment path) or any value built while rendering may hold.
RENDER_MAX_CHARS = Limit("MAILOPS_RENDER_MAX_CHARS", 5_000_000, 1000, 500_000_000, "characters")
#: Bytes one attachment (--attach or a data row's) may hold.
ATTACHMENT_MAX_BYTES = Limit("MAILOPS_ATTACHMENT_MAX_BYTES", 25 * MB, 1, 2048 * MB, "bytes")
#: Bytes a --body-file may hold (it is a template, rendered per message).
BODY_FILE_MAX_BYTES = Limit("MAILOPS_BODY_FILE_MAX_BYTES", 1 * MB, 1, 100 * MB, "bytes")
#: Bytes a JSON or YAML data file may hold (they are parsed whole; CSV is streamed and not limited).
DATA_FILE_MAX_BYTES = Limit("MAILOPS_DATA_FILE_MAX_BYTES", 100 * MB, 1, 10240 * MB, "bytes")
#: Bytes one message piped into ``mailops sendmail`` may hold (headers, body and encoded attachments).
SENDMAIL_MAX_BYTES = Limit("MAILOPS_SENDMAIL_MAX_BYTES", 50 * MB, 1, 2048 * MB, "bytes")
#: Nesting depth of a JSON or YAML value (a list in a mapping in a list ...) in a data file or senders.yaml.
MAX_DEPTH = 50


def human_size(size: float) -> str:
    """``26214400`` -> ``25 MB``; ``1000`` -> ``1000 bytes``."""
    if size >= MB and size % MB == 0:
        return f"{size / MB:g} MB"
    return f"{size:,.0f} bytes"


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True if ``value`` nests lists/mappings more than ``limit`` deep (iterative: no recursion to run out of)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
