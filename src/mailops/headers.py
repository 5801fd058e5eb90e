"""Headers the operator adds: ``send --header``, a route's ``headers:``/``unsubscribe:``/``auto_submitted:``,
a template's ``headers.yaml``.

Names are checked here once (RFC 5322 field names; headers mailops writes
itself are refused), values are Jinja rendered per message in the template
sandbox, and every rendered value goes through the one control-character rule
(``controls.header_problem``) when the message is composed. Nothing here
touches the network or the database.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .controls import header_problem

#: RFC 5322 3.6.8: field-name = 1*ftext, ftext = printable US-ASCII except ":"
_FIELD_NAME_RE = re.compile(r"[!-9;-~]+")
#: long enough for any real header name, short enough that "Name: " leaves room on a 78-character line
MAX_NAME = 64

#: Headers mailops writes itself, with where their value comes from (the fix in the error).
_OWNED = {
    "from": "the sender (senders.yaml email and name)",
    "sender": "the sender mailops sends from",
    "reply-to": "--reply-to or the sender's reply_to",
    "to": "--to, --group or the data file",
    "cc": "--cc",
    "bcc": "--bcc",
    "subject": "--subject or the template's subject.txt",
    "date": "the time the message is handed to the server",
    "message-id": "mailops (a new one per message)",
    "mime-version": "mailops (the message structure)",
}


def _owned_by(name: str) -> str | None:
    """Where mailops takes this header from, if it writes it itself; None for a header the operator may add."""
    lower = name.lower()
    if lower.startswith("content-"):
        return "mailops (the message body and attachments)"
    return _OWNED.get(lower)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an added header (one phrase naming the fix), or None if it can."""
    if not name:
        return "the header name is empty; write it as 'Name: value'"
    if len(name) > MAX_NAME or not _FIELD_NAME_RE.fullmatch(name):
        shown = name if len(name) <= MAX_NAME else name[:MAX_NAME] + "..."
        return (
            f"{shown!r} is not a valid header name (printable ASCII without spaces or ':', at most {MAX_NAME} "
            "characters, such as X-Campaign); fix the name"
        )
    owner = _owned_by(name)
    if owner is not None:
        return f"{name} is set by mailops from {owner}; remove this header"
    return None


@dataclass(frozen=True)
class HeaderSpec:
    """One added header: its name and its value as Jinja source (rendered per message), and where it came from."""

    name: str
    value: str
    source: str  # "--header", "routes.bulk.headers.X-Campaign", "newsletter/headers.yaml: X-Campaign"


def parse_header_option(item: str) -> HeaderSpec:
    """``--header 'Name: value'`` as a HeaderSpec; ValueError with the one-line message for a bad item."""
    name, sep, value = item.partition(":")
    if not sep:
        raise ValueError(f"--header {item!r}: expected 'Name: value'")
    if name != name.strip():
        problem: str | None = f"{name!r}: a header name may not start or end with a space; write it as 'Name: value'"
    else:
        problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"--header {item!r}: {problem}")
    value = value.strip()
    control = header_problem(value)
    if control is not None:
        raise ValueError(f"--header {item!r}: {control}")
    return HeaderSpec(name=name, value=value, source=f"--header {name}")


def mapping_specs(raw: Any, where: str, sep: str = ".") -> list[HeaderSpec]:
    """A ``headers:`` mapping (route or headers.yaml) as HeaderSpecs; ValueError naming ``where`` and the key.

    ``sep`` joins ``where`` and a header name in messages: ``routes.bulk.headers.X-Tag`` or
    ``templates/news/headers.yaml: X-Tag``.
    """
    if raw is None:
        return []
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping of header names to values (got {type(raw).__name__})")
    specs = []
    for name, value in raw.items():
        if not isinstance(name, str):
            raise ValueError(f"{where}: {name!r}: a header name must be text")
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(f"{where}{sep}{name}: {problem}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(f"{where}{sep}{name}: the value must be text (got {type(value).__name__}); quote it")
        text = str(value).strip()
        control = header_problem(text)
        if control is not None:
            raise ValueError(f"{where}{sep}{name}: {control}")
        specs.append(HeaderSpec(name=name, value=text, source=f"{where}{sep}{name}"))
    return specs


@dataclass(frozen=True)
class Unsubscribe:
    """A route's ``unsubscribe:``: a mailto address and/or an https URL, each Jinja rendered per recipient."""

    mailto: str | None = None
    url: str | None = None


def unsubscribe_from(raw: Any, where: str) -> Unsubscribe | None:
    """A route's ``unsubscribe:`` mapping checked; ValueError naming ``where`` and the key."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: must be a mapping with 'mailto' and/or 'url' (got {type(raw).__name__})")
    unknown = sorted(str(k) for k in raw if k not in ("mailto", "url"))
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key; unsubscribe takes 'mailto' and 'url'")
    values: dict[str, str | None] = {}
    for key in ("mailto", "url"):
        value = raw.get(key)
        if value is None:
            values[key] = None
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}.{key}: must be non-empty text")
        control = header_problem(value)
        if control is not None:
            raise ValueError(f"{where}.{key}: {control}")
        values[key] = value.strip()
    url = values["url"]
    # A URL that starts with Jinja is checked once rendered (HeaderPlan.render).
    if url is not None and not url.startswith("{") and not url.lower().startswith(("https://", "http://")):
        raise ValueError(f"{where}.url: {url!r} must be an https:// URL (one-click unsubscribe, RFC 8058)")
    if values["mailto"] is None and url is None:
        raise ValueError(f"{where}: give 'mailto', 'url' or both")
    return Unsubscribe(mailto=values["mailto"], url=url)


@dataclass(frozen=True)
class HeaderPlan:
    """Everything a request adds to each message, in order: route headers, template headers, --header.

    A later source replaces a header of the same name from an earlier one, so
    an operator's ``--header`` wins over the route's default.
    """

    specs: list[HeaderSpec] = field(default_factory=list)
    unsubscribe: Unsubscribe | None = None
    auto_submitted: bool = False

    def render(self, render_value: Callable[[str, str], str], where: str) -> list[tuple[str, str]]:
        """The (name, value) pairs for one message; ``render_value(text, source)`` renders Jinja in the sandbox.

        ValueError (naming ``where`` and the header) for a value that renders
        to something a header cannot hold.
        """
        out: dict[str, tuple[str, str]] = {}
        for spec in self.specs:
            value = " ".join(render_value(spec.value, spec.source).split())  # one line: runs of whitespace as one space
            out[spec.name.lower()] = (spec.name, value)
        if self.unsubscribe is not None:
            links = []
            one_click = False
            if self.unsubscribe.mailto is not None:
                mailto = render_value(self.unsubscribe.mailto, "unsubscribe.mailto").strip()
                links.append(_link(mailto if mailto.lower().startswith("mailto:") else f"mailto:{mailto}", where))
            if self.unsubscribe.url is not None:
                url = render_value(self.unsubscribe.url, "unsubscribe.url").strip()
                if not url.lower().startswith(("https://", "http://")):
                    raise ValueError(
                        f"{where}: unsubscribe.url renders {url!r}, not an https:// URL; fix the route's url"
                    )
                one_click = url.lower().startswith("https://")
                links.append(_link(url, where))
            out["list-unsubscribe"] = ("List-Unsubscribe", ", ".join(links))
            if one_click:  # RFC 8058: only with an https URL
                out["list-unsubscribe-post"] = ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
        if self.auto_submitted:
            out["auto-submitted"] = ("Auto-Submitted", "auto-generated")  # RFC 3834
        return list(out.values())


def _link(uri: str, where: str) -> str:
    """``<uri>`` for List-Unsubscribe (RFC 2369); ValueError if the rendered URI holds a space or angle bracket."""
    if not uri or any(c.isspace() or c in "<>" for c in uri):
        raise ValueError(f"{where}: unsubscribe link {uri!r} holds a space or '<>'; URL-encode the value (| urlencode)")
    return f"<{uri}>"


def merged(*groups: Sequence[HeaderSpec]) -> list[HeaderSpec]:
    """The specs of every group in order (later ones win when rendered)."""
    return [spec for group in groups for spec in group]
