"""A plain-text alternative generated from an HTML body (for HTML-only templates).

A multipart/alternative message whose text part is empty, or missing, is
scored as spam (MPART_ALT_DIFF, MIME_HTML_MOSTLY) and unreadable in text
clients. inscriptis (a maintained HTML-to-text converter that lays out block
elements, lists and tables) does the conversion; links keep their target as
text, ``renew here <https://...>``, since a text reader cannot click them.
"""

from __future__ import annotations

import functools
import re
import threading
from typing import Any

#: link targets worth showing in the text (an in-page "#anchor" or "javascript:" is not)
_SHOWN_SCHEMES = ("http://", "https://", "mailto:", "tel:")


def _a_start(state: Any, attrs: dict[str, Any]) -> None:
    href = str(attrs.get("href") or "").strip()
    state.link_target = href if href.lower().startswith(_SHOWN_SCHEMES) else ""


def _a_end(state: Any) -> None:
    if state.link_target:
        state.tags[-1].write(f" <{state.link_target}>")
        links: set[str] = getattr(_converting, "links", set())
        if len(links) < _MAX_DEDUPED:
            links.add(state.link_target)


@functools.cache
def _config() -> Any:
    # Imported here: only a message with an HTML-only template pays for loading lxml.
    from inscriptis.css_profiles import CSS_PROFILES
    from inscriptis.model.config import ParserConfig
    from inscriptis.model.tag import CustomHtmlTagHandlerMapping

    return ParserConfig(
        css=CSS_PROFILES["strict"],  # no indentation invented by the relaxed profile
        custom_html_tag_handler_mapping=CustomHtmlTagHandlerMapping(
            start_tag_mapping={"a": _a_start}, end_tag_mapping={"a": _a_end}
        ),
    )


#: the links seen by the conversion running in this thread (the tag handlers get no context of their own)
_converting = threading.local()
#: links whose "url <url>" repetition is cleaned up (each is one pass over the text)
_MAX_DEDUPED = 200
_BLANK_LINES_RE = re.compile(r"\n{3,}")


def html_to_text(html: str) -> str:
    """Readable plain text for ``html``: paragraphs, lists and tables laid out, links as ``text <url>``."""
    from inscriptis import get_text

    if not html.strip():
        return ""
    links: set[str] = set()
    _converting.links = links
    try:
        text: str = get_text(html, _config())
    finally:
        del _converting.links
    # "https://x.y <https://x.y>": the link text was the address itself; say it once.
    for url in links:
        text = text.replace(f"{url} <{url}>", url)
    lines = [line.rstrip() for line in text.splitlines()]
    return _BLANK_LINES_RE.sub("\n\n", "\n".join(lines)).strip() + "\n"
