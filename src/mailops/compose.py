"""Building the MIME message: addresses, headers, text/HTML parts and attachments.

Messages are ``EmailMessage`` objects with the modern email policy, serialized
with an ``email.policy.SMTP`` equivalent (CRLF). Bodies are kept 7-bit clean
(quoted-printable or base64 for non-ASCII text) so any server accepts them,
8BITMIME or not. Envelope recipients are passed explicitly and never re-parsed
from headers, so Bcc recipients receive the message without appearing in it.

The address headers, Subject, Date and Message-ID are encoded (RFC 2047, when
not plain ASCII) and folded here rather than by the modern policy's folder: on
Python 3.11 that folder drops the space between two words in about one in
twenty non-ASCII subjects and display names (a "Verlängerung Verlängerung"
arrives as "VerlängerungVerlängerung"), and older releases can unquote a
folded display name such as "Doe, Jane". The words are encoded by
``email.charset`` (each encoded-word stands alone, whole characters only); we
only choose where lines break. It is also several times faster, which matters
for a mail merge of thousands of rows.
"""

from __future__ import annotations

import binascii
import email.charset
import email.generator
import email.policy
import email.quoprimime as quoprimime
import functools
import hashlib
import io
import itertools
import mimetypes
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import Address, BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOT_ATOM_TEXT,
    EMAIL_MAX_LENGTH,
    LOCAL_PART_MAX_LENGTH,
)

from .controls import header_problem
from .errors import InputError


class _CachedHeaderRegistry(HeaderRegistry):
    """HeaderRegistry that builds each header class once.

    The stock registry creates a new class with ``type()`` for every header it
    parses, which is a large share of the time needed to build a message; the
    classes hold no state, so reusing them changes nothing but speed.
    """

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


class _Folded(str):
    """A header value already RFC 2047-encoded and folded ("\\n " between lines), written out exactly as is."""


class _Policy(email.policy.EmailPolicy):
    """The default policy, except that ``_Folded`` values are stored and written without re-folding."""

    def header_store_parse(self, name: str, value: Any) -> tuple[str, Any]:
        """Keep a pre-folded value as it is (the stock method refuses its line breaks)."""
        if isinstance(value, _Folded):
            return (name, value)
        return super().header_store_parse(name, value)

    def fold(self, name: str, value: Any) -> str:
        """Write a pre-folded value line by line; anything else as the default policy does."""
        if isinstance(value, _Folded):
            return name + ": " + self.linesep.join(value.split("\n")) + self.linesep
        folded: str = super().fold(name, value)
        return folded

    def fold_binary(self, name: str, value: Any) -> bytes:
        """As ``fold``, for the bytes generator (a pre-folded value is pure ASCII)."""
        if isinstance(value, _Folded):
            return self.fold(name, value).encode("ascii")
        return super().fold_binary(name, value)


# cte_type="7bit": never emit raw 8-bit bodies, which a server without 8BITMIME may mangle.
_POLICY = _Policy(cte_type="7bit", header_factory=_CachedHeaderRegistry())
# What the message is written with: email.policy.SMTP (CRLF) plus the pre-folded headers above.
_SMTP = _Policy(linesep="\r\n", header_factory=_CachedHeaderRegistry())

_UTF8 = email.charset.Charset("utf-8")
_MAX_LINE = 76  # RFC 2047: a line holding an encoded-word is at most 76 characters
_MAX_FOLDED = 78  # RFC 5322: a line SHOULD be at most 78 characters (and MUST be at most 998)
_MAX_HEADER_LINE = 998
_MIN_ROOM = 16  # fold before an encoded-word that would get less room than this


class _HeaderFolder:
    """Lays out one header's tokens in lines of at most 76 characters, breaking only at spaces."""

    def __init__(self, name: str) -> None:
        self._prefix = len(name) + 2  # "Name: "
        self._lines: list[str] = []
        self._current = name + ":"

    def _fits(self, token: str) -> bool:
        return len(self._current) + 1 + len(token) <= _MAX_LINE or len(self._current) <= self._prefix

    def _newline(self) -> None:
        self._lines.append(self._current)
        self._current = ""

    def add(self, token: str) -> None:
        """Append an unbreakable piece, preceded by one space (which may become a line break)."""
        if not self._fits(token) and token:
            self._newline()
        self._current += " " + token

    def add_text(self, text: str) -> None:
        """Append plain text, breaking lines only at spaces; a run of spaces goes with the word after it.

        Unfolding (removing each line break) gives the text back exactly. Keeping
        a run of spaces with the next word lets a line break come before the run,
        so two spaces next to a fold do not push a line past its limit.
        """
        pending = ""
        for token in text.split(" "):
            if not token:
                pending += " "
                continue
            self.add(pending + token)
            pending = ""
        self._current += pending

    def add_words(self, text: str) -> None:
        """Append text as encoded-words, each a separate token (the space between them is not text)."""
        room = _MAX_LINE - len(self._current) - 1
        if room < _MIN_ROOM:
            self._newline()
            room = _MAX_LINE - 1
        words = _UTF8.header_encode_lines(text, itertools.chain([room], itertools.repeat(_MAX_LINE - 1)))
        for index, word in enumerate(words):
            if word is None:  # nothing fitted in the room left on the first line
                continue
            if index:
                self._newline()
            self._current += " " + word

    def value(self) -> _Folded:
        """The folded value without the leading ``Name: ``."""
        return _Folded("\n".join([*self._lines, self._current])[self._prefix :])


def _needs_encoding(text: str) -> bool:
    # "=?" would be taken for the start of an encoded-word by the reader; encode it so it stays text.
    return not text.isascii() or "=?" in text


def _add_address(folder: _HeaderFolder, address: Address, suffix: str) -> None:
    name = address.display_name
    if name and _needs_encoding(name):
        folder.add_words(name)
        folder.add(f"<{address.addr_spec}>{suffix}")
        return
    # ASCII: the email package quotes the name when needed; a quoted name may be folded at its spaces.
    folder.add_text(str(address) + suffix)


def _add_address_encoding_long_names(folder: _HeaderFolder, address: Address, suffix: str) -> None:
    name = address.display_name
    if name and _longest_piece(name) > _MAX_LINE // 2:
        folder.add_words(name)
        folder.add(f"<{address.addr_spec}>{suffix}")
    else:
        _add_address(folder, address, suffix)


_PIECE_RE = re.compile(r" *[^ ]+| +")


def _longest_piece(text: str) -> int:
    """Length of the longest stretch of ``text`` that folding at spaces cannot break.

    A stretch is a word and the spaces before it.
    """
    return max((len(piece) for piece in _PIECE_RE.findall(text)), default=0)


def _fits(name: str, value: str, limit: int = _MAX_FOLDED) -> bool:
    """Whether every line of the folded ``value`` (``Name: `` before the first) is within ``limit`` characters."""
    if len(name) + 2 + len(value) <= limit:  # the usual header: short, one line
        return True
    lines = value.split("\n")
    return len(name) + 2 + len(lines[0]) <= limit and all(len(line) <= limit for line in lines[1:])


def _one_line(name: str, text: str) -> bool:
    """Whether plain ASCII ``text`` fits on the header's first line: the folder would then give it back as it is.

    (Every word fits the line, so no break is made, and a run of spaces stays where it was.)
    """
    return len(name) + 2 + len(text) <= _MAX_LINE and not _needs_encoding(text)


def _address_value(name: str, addresses: Sequence[Address], texts: Sequence[str] | None = None) -> _Folded:
    """The folded value of an address header; ``texts``: ``str()`` of each address, when the caller has them."""
    if len(addresses) == 1 and not (addresses[0].display_name and _needs_encoding(addresses[0].display_name)):
        # the usual To of a mail merge: one address with a plain name, short enough for one line
        text = texts[0] if texts is not None else str(addresses[0])
        if _one_line(name, text):
            return _Folded(text)
    folder = _HeaderFolder(name)
    last = len(addresses) - 1
    for index, address in enumerate(addresses):
        _add_address(folder, address, "," if index < last else "")
    value = folder.value()
    if _fits(name, value):
        return value
    # An ASCII display name with a very long word or run of spaces cannot be folded at its spaces within a
    # line: send such names as encoded-words (RFC 2047), which may break anywhere. Ordinary names stay plain.
    folder = _HeaderFolder(name)
    for index, address in enumerate(addresses):
        _add_address_encoding_long_names(folder, address, "," if index < last else "")
    return folder.value()


@functools.lru_cache(maxsize=256)
def _cached_address_value(name: str, key: tuple[tuple[str, str], ...]) -> _Folded:
    # From, Reply-To and Cc repeat on every message of a run; encode them once.
    return _address_value(name, [make_address(n, a) for n, a in key])


def _text_value(name: str, text: str, *, encode_long: bool = True) -> _Folded:
    # Plain ASCII is folded at its spaces (unfolding restores it exactly); anything else, or text that
    # cannot be folded at spaces within 78-character lines (a long word, a long run of spaces), is sent
    # as encoded-words, which may break anywhere.
    if _one_line(name, text):  # the usual subject
        return _Folded(text)
    if not _needs_encoding(text):
        folder = _HeaderFolder(name)
        folder.add_text(text)
        value = folder.value()
        if _fits(name, value) or not encode_long:
            return value
    folder = _HeaderFolder(name)
    folder.add_words(text)
    return folder.value()


def _subject_value(subject: str) -> _Folded:
    return _text_value("Subject", subject)


@dataclass(frozen=True, eq=False)
class StoredPart:
    """An attachment's body as the message carries it (base64 lines, CRLF), stored once under its sha256.

    One object is shared by every message of a run that attaches the same file,
    so a thousand messages with one brochure hold (and store) its bytes once.
    """

    digest: str  # sha256 hex of data
    data: bytes = field(repr=False)


#: (offset in the skeleton, part): the body goes in at that byte of the message without attachment bodies
Splice = tuple[int, StoredPart]


def splice(skeleton: bytes, parts: Sequence[tuple[int, bytes]]) -> bytes:
    """The whole message: ``skeleton`` with each body inserted at its offset (offsets in ascending order)."""
    if not parts:
        return skeleton
    pieces: list[bytes] = []
    at = 0
    for offset, data in parts:
        pieces.append(skeleton[at:offset])
        pieces.append(data)
        at = offset
    pieces.append(skeleton[at:])
    return b"".join(pieces)


@dataclass(frozen=True)
class PreparedEmail:
    """A serialized message plus the envelope it is sent with.

    The message is ``skeleton`` (every byte but the attachment bodies: headers,
    Message-ID, boundaries, text and HTML parts, each attachment's own headers)
    with ``stored`` bodies spliced in; ``mime`` gives the whole message.
    """

    skeleton: bytes = field(repr=False)  # CRLF line endings
    envelope_from: str
    envelope_to: list[str]  # To + Cc + Bcc addresses, deduplicated, in order
    subject: str
    message_id: str
    to_header: str  # decoded To header, for logs and previews
    stored: tuple[Splice, ...] = ()

    @property
    def mime(self) -> bytes:
        """The whole message, ready for SMTP DATA (assembled on each call: a copy of every attachment)."""
        return splice(self.skeleton, [(offset, part.data) for offset, part in self.stored])

    @property
    def size(self) -> int:
        """Bytes of the whole message, without assembling it."""
        return len(self.skeleton) + sum(len(part.data) for _, part in self.stored)


def check_header_text(value: str, *, where: str) -> str:
    """Return ``value`` unchanged, or raise InputError naming ``where`` if it holds a control character.

    The one rule for every header value (``controls.header_problem``): line
    breaks would inject headers, other controls reach terminals and parsers.
    """
    problem = header_problem(value)
    if problem is not None:
        raise InputError(f"{where}: {problem}")
    return value


# Special-use names that intranets and test setups give real mailboxes (RFC 6761 localhost, RFC 6762 .local,
# RFC 8375 .home.arpa). email-validator refuses them because they are not deliverable on the public
# Internet, which a company relay or a test server does not need; `.test` passes with its
# test_environment option, `.internal` and `.lan` pass as they are. Each maps to a stand-in of the
# same length and label shape that the library accepts, so every other check (length limits,
# labels, IDNA) is still the library's own; `.invalid`, `.onion` and the rest of `.arpa` stay refused.
_INTRANET_STAND_INS = {"localhost": "zzzz.zzzz", "local": "zzzzz", "home.arpa": "home.zzzz"}
_DOMAIN_DOTS = ".\u3002\uff0e\uff61"  # the dots IDNA reads as label separators


def _intranet_suffix(domain: str) -> str | None:
    """The special-use name in ``_INTRANET_STAND_INS`` that ``domain`` is or ends in, if any."""
    for suffix in _INTRANET_STAND_INS:
        head, tail = domain[: -len(suffix)], domain[-len(suffix) :]
        if tail.lower() == suffix and (not head or head[-1] in _DOMAIN_DOTS):
            return suffix
    return None


def _validate(addr: str) -> tuple[str, str, str]:
    """(addr-spec as mail carries it, normalized domain, IDNA ASCII domain) of ``addr``, or EmailNotValidError."""
    # allow_smtputf8=False: a non-ASCII local part needs SMTPUTF8 end to end, which we do not rely on;
    # non-ASCII domains are fine, they become IDNA (xn--).
    suffix = _intranet_suffix(addr.rpartition("@")[2])
    stand_in = _INTRANET_STAND_INS[suffix] if suffix else ""
    checked = addr[: len(addr) - len(stand_in)] + stand_in
    result = validate_email(checked, check_deliverability=False, allow_smtputf8=False, test_environment=True)
    values = (result.ascii_email or result.normalized, result.domain, result.ascii_domain)
    if suffix is None:
        return values
    # the library lower-cases the ASCII stand-in; put the real name back in its place
    addr_spec, domain, ascii_domain = (value[: len(value) - len(stand_in)] + suffix for value in values)
    return addr_spec, domain, ascii_domain


def _library_addr_spec(addr: str) -> str:
    return _validate(addr)[0]


def is_intranet_domain(domain: str) -> bool:
    """True if ``domain`` (IDNA ASCII) is a special-use or internal name that no public mail service delivers to.

    localhost, .local, .home.arpa and .test (RFC 6761, 6762, 8375), .internal
    (reserved by ICANN for private use), and the names RFC 6762 appendix G
    lists as used on private networks (.intranet, .private, .corp, .home, .lan).
    """
    name = domain.lower().rstrip(".")
    internal = ("localhost", "local", "home.arpa", "test", "internal", "intranet", "private", "corp", "home", "lan")
    return any(name == tld or name.endswith("." + tld) for tld in internal)


@functools.lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> tuple[str, int] | None:
    """(IDNA ASCII form, longest UTF-8 length of its forms) if email-validator accepts ``a@domain``, else None.

    The domain checks do not depend on the local part, except the whole-address
    length limit, which the library applies to the address as given, to its
    normalized form (Unicode domain) and to its IDNA ASCII form, in UTF-8 bytes.
    """
    try:
        _, normalized, ascii_domain = _validate("a@" + domain)
    except EmailNotValidError:
        return None
    longest = max(len(domain.encode("utf-8")), len(normalized.encode("utf-8")), len(ascii_domain))
    return ascii_domain, longest


_CASE_INSENSITIVE_LOCAL = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


@functools.lru_cache(maxsize=4096)
def _validated_addr_spec(addr: str) -> str:
    """The address as ``_library_addr_spec`` returns it (or its EmailNotValidError), faster for plain addresses.

    Validating every row of a large mail merge with email-validator costs about
    55 us an address, mostly checking the domain (IDNA), though most rows share
    a few domains. A plain ASCII dot-atom local part needs no more than the
    library's own regex, so only the domain goes through the library, once per
    domain; the rest is what the library does for such a local part: RFC 2142
    names (Postmaster, INFO...) lowercased, and the 254-byte limit on each form
    of the address. Anything else, and any address that fails here, goes to the
    library, so errors are its own. tests/test_compose_addresses.py checks this
    against the library on thousands of generated addresses. (Like the cache
    above, the domain cache assumes email_validator's module-level defaults are
    not changed at run time; mailops never changes them.)
    """
    local, at, domain = addr.rpartition("@")
    # The local part length limit applies only in the library's strict mode; over it, let the library decide.
    if at and len(local) <= LOCAL_PART_MAX_LENGTH and DOT_ATOM_TEXT.match(local):
        checked = _checked_domain(domain)
        if checked is not None and len(local) + 1 + checked[1] <= EMAIL_MAX_LENGTH:
            if local.lower() in _CASE_INSENSITIVE_LOCAL:
                local = local.lower()
            return local + "@" + checked[0]
    return _library_addr_spec(addr)


# An address with none of these characters is one addr-spec or nothing: no display name, no quoting,
# no comment, no second address. Such values (a data file's email column) skip the header parser.
_BARE_ADDRESS_RE = re.compile(r'[^\s<>()\[\]",;:\\]+')
# The header parser's time grows with the square of an entry's length in the worst case (thousands
# of quotes: 0.15 s at 2,000 characters, 3 s at 10,000); a data file may hold one such value per row.
MAX_ADDRESS_ENTRY = 2000
# Harmless defects: "J. Doe" is obsolete syntax every reader takes as meant; a non-ASCII local part
# is refused below by email-validator, with its own message.
_TOLERATED_DEFECTS = ("period in 'phrase'", "local-part contains non-ASCII characters)")


def _one_mailbox(text: str) -> tuple[str, str] | str:
    """(display name, addr-spec) of the single mailbox ``text`` holds, or a phrase saying why it is not one.

    This is the strict reading CPython gives ``email.utils.getaddresses(...,
    strict=True)`` since 3.11.10/3.12.6 (CVE-2023-27043), which Python 3.11.7
    lacks: its ``parseaddr`` takes ``alice@example.com <bob@evil.com>`` as
    alice@ while other readers, and the message's own To header, take bob@.
    We use the header parser of ``email.headerregistry`` (the one that reads
    the headers we write) and accept only an entry it reads as exactly one
    mailbox with no invalid parts: no second address, no text after the
    angle-addr, no group, no unbalanced quote or bracket.
    """
    from email import _header_value_parser as parser
    from email.errors import HeaderParseError

    try:
        address_list, rest = parser.get_address_list(text)
    except (HeaderParseError, IndexError, ValueError):  # the parser's own errors on some malformed input
        return "not_one"
    separators = [t for t in address_list if t.token_type == "list-separator"]
    if rest or separators or len(address_list.addresses) > 1:
        return "several"
    if len(address_list.addresses) != 1 or address_list.addresses[0][0].token_type != "mailbox":
        return "not_one"
    if any(str(defect) not in _TOLERATED_DEFECTS for defect in address_list.all_defects):
        return "not_one"
    mailbox = address_list.addresses[0].all_mailboxes[0]  # the one mailbox checked above
    return mailbox.display_name or "", mailbox.addr_spec or ""


def _name_and_brackets(text: str) -> tuple[str, str] | None:
    """(name, text in the brackets) if ``text`` is shaped ``Name <...>`` with one pair of brackets at its end.

    String operations rather than a regular expression: linear in the length
    of a hostile value.
    """
    if not text.endswith(">") or text.count("<") != 1 or text.count(">") != 1:
        return None
    name, _, addr = text[:-1].partition("<")
    return name.strip(), addr.strip()


def _not_one_address(value: str, text: str, where: str, problem: str) -> InputError:
    shaped = _name_and_brackets(text)
    if shaped is not None:
        name, addr = shaped
        if "," in name and '"' not in name and "@" not in name:  # "Müller, Jürgen <a@b.c>" reads as two entries
            return InputError(
                f"{where}: {value!r}: a display name with a comma must be in double quotes; write '\"{name}\" <{addr}>'"
            )
        if name.count('"') in (0, 2) and (name.count('"') == 0 or (name[0] == name[-1] == '"')):
            try:  # the shape is right: say what is wrong with the address itself
                _validated_addr_spec(addr)
            except EmailNotValidError as exc:
                return InputError(f"{where}: {value!r} is not a valid email address: {exc}")
    if problem == "several":
        return InputError(f"{where}: {value!r} holds more than one address; give each address its own entry")
    return InputError(
        f"{where}: {value!r} is not exactly one address (a second address, text after '>' or an unbalanced "
        "quote or bracket); write it as 'Name <user@example.com>' or 'user@example.com'"
    )


def parse_address(value: str, *, where: str, display_name: bool = True) -> Address:
    """Parse ``Jane Doe <jane@x.com>`` or ``jane@x.com``; InputError naming ``where`` if it is not one valid address.

    The one address parser of mailops: config validation (sender addresses,
    reply_to, groups), ``send`` options, groups and data files all use it, so
    what the config accepts is exactly what is sent. An entry must hold exactly
    one address (see ``_one_mailbox``); the address itself is checked by
    email-validator, not a regex. ``display_name=False`` refuses a display name
    (a sender's ``email`` key).
    """
    check_header_text(value, where=where)
    text = value.strip()
    if len(text) > MAX_ADDRESS_ENTRY:
        raise InputError(
            f"{where}: the address is {len(text):,} characters long; an address with its display name may be at "
            f"most {MAX_ADDRESS_ENTRY:,}"
        )
    if _BARE_ADDRESS_RE.fullmatch(text):
        name, addr = "", text
    else:
        found = _one_mailbox(text)
        if isinstance(found, str):
            raise _not_one_address(value, text, where, found)
        name, addr = found
        if not display_name and (name or "<" in text):
            raise InputError(f"{where}: {value!r}: only the address belongs here; put the display name under 'name'")
    try:
        addr_spec = _validated_addr_spec(addr)
    except EmailNotValidError as exc:
        raise InputError(f"{where}: {value!r} is not a valid email address: {exc}") from None
    return make_address(name, addr_spec)


def make_address(display_name: str, addr_spec: str) -> Address:
    """An Address from a display name and an already validated ``user@domain``.

    Passing user and domain separately skips the email package's re-parse of
    the address, a noticeable cost per row of a large mail merge.
    """
    username, _, domain = addr_spec.rpartition("@")
    return Address(display_name=display_name, username=username, domain=domain)


def make_message_id(domain: str) -> str:
    """A new globally unique Message-ID on ``domain`` (the sender's domain)."""
    return make_msgid(domain=domain)


def _key(addresses: Sequence[Address]) -> tuple[tuple[str, str], ...]:
    return tuple((a.display_name, a.addr_spec) for a in addresses)


def _read_attachment(path: Path, where: str) -> bytes:
    from .files import FileRefused, read_regular_file
    from .limits import ATTACHMENT_MAX_BYTES

    try:
        return read_regular_file(Path(path), ATTACHMENT_MAX_BYTES)
    except FileRefused as exc:
        raise InputError(f"{where}: attachment {str(path)!r}: {exc.reason}") from None


def _mime_type(path: Path) -> tuple[str, str]:
    ctype, encoding = mimetypes.guess_type(path.name)
    # A compressed file (".tar.gz") is not its inner type; message/* and multipart/* cannot be base64 leaves.
    if ctype is None or encoding is not None or ctype.split("/")[0] in ("message", "multipart"):
        ctype = "application/octet-stream"
    maintype, _, subtype = ctype.partition("/")
    return maintype, subtype


def _unique(addresses: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for addr in addresses:
        folded = addr.casefold()
        if folded not in seen:
            seen.add(folded)
            out.append(addr)
    return out


def build_message(
    *,
    from_addr: Address,
    reply_to: list[Address] | None,
    to: list[Address],
    cc: list[Address],
    bcc: list[Address],
    subject: str,
    text: str,
    html: str | None,
    attachments: Sequence[Path],
    message_id: str,
    date: datetime,
    where: str,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> PreparedEmail:
    """Compose one message; Bcc goes only into the envelope. InputError (naming ``where``) for bad input.

    ``extra_headers`` (name, value) pairs come after Message-ID; their names are
    checked by ``headers.name_problem`` before this, their values here.
    """
    builder = MessageBuilder(from_addr=from_addr, reply_to=reply_to, cc=cc, bcc=bcc, date=date)
    return builder.build(
        to=to,
        subject=subject,
        text=text,
        html=html,
        attachments=attachments,
        message_id=message_id,
        where=where,
        extra_headers=extra_headers,
    )


class MessageBuilder:
    """Composes the messages of one run: what they all share (sender, Reply-To, Cc, Bcc, Date) is encoded once.

    ``build`` gives the bytes :func:`build_message` gives with the same
    arguments (it is what that function runs); a mail merge builds thousands
    of messages that differ only in To, Subject, body and Message-ID.
    """

    def __init__(
        self,
        *,
        from_addr: Address,
        reply_to: list[Address] | None,
        cc: list[Address],
        bcc: list[Address],
        date: datetime,
    ) -> None:
        if date.tzinfo is None:  # a naive time would serialize as "-0000" (unknown zone)
            date = date.replace(tzinfo=UTC)
        self._from = ("From", _cached_address_value("From", _key([from_addr])))
        self._reply_to = ("Reply-To", _cached_address_value("Reply-To", _key(reply_to))) if reply_to else None
        self._cc = ("Cc", _cached_address_value("Cc", _key(cc))) if cc else None
        # ASCII without line breaks and shorter than a line: nothing to encode or fold.
        self._date = ("Date", _Folded(format_datetime(date)))
        self._envelope_from = from_addr.addr_spec
        self._copies = [a.addr_spec for a in (*cc, *bcc)]

    def build(
        self,
        *,
        to: list[Address],
        subject: str,
        text: str,
        html: str | None,
        attachments: Sequence[Path],
        message_id: str,
        where: str,
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> PreparedEmail:
        """One message to ``to``; InputError (naming ``where``) for bad input (see :func:`build_message`)."""
        check_header_text(subject, where=f"{where}: subject")
        headers: list[tuple[str, _Folded]] = [self._from]
        if self._reply_to is not None:
            headers.append(self._reply_to)
        if to:
            texts = [str(a) for a in to]
            headers.append(("To", _address_value("To", to, texts)))
            to_header = ", ".join(texts)
        elif self._cc is None:
            # Bcc-only mail: an empty group keeps the header RFC-correct without revealing anyone.
            to_header = "undisclosed-recipients:;"
            headers.append(("To", _Folded(to_header)))
        else:
            to_header = ""
        if self._cc is not None:
            headers.append(self._cc)
        headers.append(("Subject", _subject_value(subject)))
        headers.append(self._date)
        headers.append(("Message-ID", _Folded(check_header_text(message_id, where=f"{where}: Message-ID"))))
        for name, value in extra_headers:
            # An ASCII value stays as written (a URL or token must not become encoded-words), folded at spaces.
            headers.append(
                (name, _text_value(name, check_header_text(value, where=f"{where}: header {name}"), encode_long=False))
            )
        for name, value in headers:
            if not _fits(name, value, _MAX_HEADER_LINE):
                # cannot happen with the folding above; a last guard so no server answers "500 Line too long"
                raise InputError(
                    f"{where}: the {name} header cannot be written in lines of at most {_MAX_HEADER_LINE} "
                    "characters; shorten the value"
                )

        stored: tuple[Splice, ...] = ()
        if html is None and not attachments:
            skeleton = _plain_text_message(headers, text)
        else:
            skeleton, stored = _mime_message(headers, text, html, attachments, where)
        return PreparedEmail(
            skeleton=skeleton,
            stored=stored,
            envelope_from=self._envelope_from,
            envelope_to=_unique([*(a.addr_spec for a in to), *self._copies]),
            subject=subject,
            message_id=message_id,
            to_header=to_header,
        )


def _mime_message(
    headers: list[tuple[str, _Folded]], text: str, html: str | None, attachments: Sequence[Path], where: str
) -> tuple[bytes, tuple[Splice, ...]]:
    """A multipart message built by the email package, as (skeleton, attachment bodies and where they go).

    Each attachment is encoded once (:func:`_encoded_attachment`) and goes into
    the message as a small placeholder part; once the email package has written
    the message, each placeholder is replaced by the attachment's own headers and
    its body is left out, to be spliced back at that offset. Whole, the bytes are
    those the email package writes with the attachments in place (a test compares
    them); the boundary is chosen as it would be (random, checked against the text).
    """
    msg = EmailMessage(policy=_POLICY)
    for name, value in headers:
        msg[name] = value
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    encoded = [_encoded_attachment(Path(path), where) for path in attachments]
    placeholders: list[EmailMessage] = []
    token = secrets.token_hex(16)
    for index in range(len(encoded)):
        msg.add_attachment(f"mailops-{token}-{index}".encode("ascii"), maintype="application", subtype="octet-stream")
        payload = msg.get_payload()
        assert isinstance(payload, list)  # add_attachment made the message multipart
        last = payload[-1]
        assert isinstance(last, EmailMessage)  # a part of an EmailMessage is one too
        placeholders.append(last)
    if msg.is_multipart():
        # Sub-parts created by add_alternative/add_attachment carry their own MIME-Version; only the top needs it.
        for part in msg.walk():
            if part is not msg:
                del part["MIME-Version"]
    whole = msg.as_bytes(policy=_SMTP)
    pieces: list[bytes] = []
    stored: list[Splice] = []
    at = length = 0
    for placeholder, (head, body) in zip(placeholders, encoded, strict=True):
        written = _part_bytes(placeholder)
        start = whole.index(written, at)
        pieces += [whole[at:start], head]
        length += start - at + len(head)
        stored.append((length, body))
        at = start + len(written)
    pieces.append(whole[at:])
    return b"".join(pieces), tuple(stored)


def _part_bytes(part: EmailMessage) -> bytes:
    """A sub-part as the generator writes it inside its multipart parent (same policy, CRLF)."""
    buffer = io.BytesIO()
    email.generator.BytesGenerator(buffer, mangle_from_=False, policy=_SMTP).flatten(part, linesep="\r\n")
    return buffer.getvalue()


class _EncodedCache:
    """Encoded attachments by file identity, bounded by the bytes held (least recently used dropped first).

    A mail merge attaches the same brochure to every row: reading, hashing and
    encoding it once instead of per row is most of the time saved.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], tuple[bytes, StoredPart]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> tuple[bytes, StoredPart] | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[Any, ...], value: tuple[bytes, StoredPart]) -> None:
        size = len(value[1].data)
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += size
            while self._bytes > self.max_bytes:  # bounded: each pass drops one entry
                _, (_, dropped) = self._items.popitem(last=False)
                self._bytes -= len(dropped.data)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


#: 64 MB of encoded attachments: a 10 MB brochure fits; per-row invoices pass through
_ENCODED = _EncodedCache(64 * 1024 * 1024)


def _encoded_attachment(path: Path, where: str) -> tuple[bytes, StoredPart]:
    """(the part's headers up to its blank line, its body stored once) of the file at ``path`` as an attachment."""
    maintype, subtype = _mime_type(path)
    try:
        info = os.stat(path)
        key: tuple[Any, ...] | None = (
            os.path.realpath(path),
            info.st_dev,
            info.st_ino,
            info.st_size,
            info.st_mtime_ns,
            path.name,
            maintype,
            subtype,
        )
    except OSError:
        key = None  # _read_attachment says what is wrong
    if key is not None and (found := _ENCODED.get(key)) is not None:
        return found
    data = _read_attachment(path, where)
    part = EmailMessage(policy=_POLICY)
    part.set_content(data, maintype=maintype, subtype=subtype, filename=path.name)
    del part["MIME-Version"]
    written = _part_bytes(part)
    cut = written.index(b"\r\n\r\n") + 4
    body = written[cut:]
    value = (written[:cut], StoredPart(hashlib.sha256(body).hexdigest(), body))
    if key is not None:
        _ENCODED.put(key, value)
    return value


_LINE_END_RE = re.compile(r"\r\n|\r|\n")


def _plain_text_message(headers: list[tuple[str, _Folded]], text: str) -> bytes:
    """The bytes ``_mime_message`` gives for a text-only message, written directly.

    A mail merge is mostly plain-text messages, and the email package spends
    about 0.3 ms on each (header objects, content manager, generator): as
    much as sending it. This writes the same bytes (the headers are already
    folded; the body is chosen and encoded as ``set_content`` does under a
    7-bit policy), which tests check byte for byte against the email package.
    """
    cte, body = _encode_text_body(text)
    out = [name + ": " + value.replace("\n", "\r\n") + "\r\n" for name, value in headers]
    out.append(f'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n')
    out.append("MIME-Version: 1.0\r\n\r\n")
    lines = _LINE_END_RE.split(body)
    out.append("\r\n".join(lines))
    return "".join(out).encode("ascii")


_MAX_BODY_LINE: int = _POLICY.max_line_length or 78  # the policy keeps the default, 78; None (no limit) is never set


def _encode_text_body(text: str) -> tuple[str, str]:
    """(Content-Transfer-Encoding, body) as ``EmailMessage.set_content(text)`` chooses them.

    That is, for UTF-8 text under cte_type 7bit.

    7bit when the text is ASCII with short lines; otherwise quoted-printable or
    base64, whichever the first ten lines say is shorter.
    """
    lines = text.encode("utf-8").splitlines()
    body = b"\n".join(lines) + b"\n"
    if max((len(x) for x in lines), default=0) <= _MAX_BODY_LINE and body.isascii():
        return "7bit", body.decode("ascii")
    sniff = body if len(lines) <= 10 else b"\n".join(lines[:10]) + b"\n"
    sniff_qp = quoprimime.body_encode(sniff.decode("latin-1"), _MAX_BODY_LINE)
    if len(sniff_qp) > len(binascii.b2a_base64(sniff)):
        step = _MAX_BODY_LINE // 4 * 3
        return "base64", "".join(
            binascii.b2a_base64(body[i : i + step]).decode("ascii") for i in range(0, len(body), step)
        )
    if len(lines) <= 10:
        return "quoted-printable", sniff_qp
    return "quoted-printable", quoprimime.body_encode(body.decode("latin-1"), _MAX_BODY_LINE)


# ---------------------------------------------------------------- failover rewrite


def _folded(name: str, addresses: Iterable[Address], linesep: bytes) -> bytes:
    value = _address_value(name, list(addresses))
    return name.encode("ascii") + b": " + linesep.join(v.encode("ascii") for v in value.split("\n")) + linesep


#: header fields that hold a list of addresses (RFC 5322 3.6.2, 3.6.3, 3.6.6, and common extensions)
ADDRESS_FIELDS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "mail-followup-to",
        "mail-reply-to",
        "disposition-notification-to",
        "return-receipt-to",
    }
)
#: structured fields whose non-ASCII parameters are written as RFC 2231 (filename*=utf-8''...)
_PARAMETER_FIELDS = frozenset({"content-type", "content-disposition"})
#: structured fields that are ASCII by definition: nothing in them may be encoded
_ASCII_FIELDS = frozenset(
    {
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "mime-version",
        "content-transfer-encoding",
        "content-id",
        "return-path",
        "received",
        "resent-date",
        "resent-message-id",
        "dkim-signature",
        "list-unsubscribe",
        "list-unsubscribe-post",
    }
)


def encode_field(name: str, value: str, addresses: Sequence[Address] | None, *, where: str) -> bytes:
    """A header field with non-ASCII ``value`` written in ASCII, CRLF-folded (without the final line end).

    Display names of address fields (``addresses``: the field's parsed
    addresses, already checked) and unstructured text become RFC 2047
    encoded-words; the addresses themselves stay as they are (an
    internationalized domain already in its ``xn--`` form). Parameters of
    Content-Type and Content-Disposition become RFC 2231 (``filename*=``).
    InputError for a field that must be ASCII (Date, Message-ID, ...).
    """
    key = name.lower()
    if key in ADDRESS_FIELDS:
        assert addresses is not None, "address fields are parsed by the caller"
        return _folded(name, addresses, b"\r\n").removesuffix(b"\r\n")
    if key in _ASCII_FIELDS:
        raise InputError(f"{where}: non-ASCII characters in a field that is ASCII by definition; remove them")
    if key in _PARAMETER_FIELDS:
        header = _SMTP.header_factory(name, value)
        if header.defects:
            raise InputError(f"{where}: {value!r} cannot be read ({header.defects[0]}); write it as RFC 2045 says")
        folded: str = header.fold(policy=_SMTP)
        return folded.encode("ascii").removesuffix(b"\r\n")
    return (name + ": " + _text_value(name, value).replace("\n", "\r\n")).encode("ascii")


def _split_fields(head: bytes, linesep: bytes) -> list[bytes]:
    """Header fields with their continuation lines, each ending with ``linesep``."""
    fields: list[bytes] = []
    for line in head.split(linesep):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + linesep
        else:
            fields.append(line + linesep)
    return fields


def _field_name(raw: bytes) -> bytes:
    return raw.split(b":", 1)[0].strip().lower()


def rewrite_sender(mime: bytes, *, from_addr: Address, reply_to: list[Address] | None, envelope_from: str) -> bytes:
    """Put another sender on an already built message (failover): replace From, and Reply-To if given.

    Every other byte stays as it was, Message-ID included, so the message is
    the same message wherever it is finally sent from. When ``envelope_from``
    differs from the From address, a Sender header names the mailbox that
    actually sends (RFC 5322 section 3.6.2); otherwise any stale Sender is dropped.
    """
    check_header_text(envelope_from, where="envelope sender")
    linesep = b"\r\n" if b"\r\n" in mime[: mime.find(b"\n") + 1] else b"\n"
    end = mime.find(linesep * 2)
    if end < 0:
        head, body = mime, b""
    else:
        head, body = mime[:end], mime[end + len(linesep) :]  # body keeps the blank separator line

    new_from = _folded("From", [from_addr], linesep)
    new_reply = _folded("Reply-To", list(reply_to), linesep) if reply_to else None
    new_sender = None
    if envelope_from.casefold() != from_addr.addr_spec.casefold():
        new_sender = _folded("Sender", [Address(addr_spec=envelope_from)], linesep)

    out: list[bytes] = []
    placed_from = placed_reply = placed_sender = False
    for raw in _split_fields(head, linesep):
        name = _field_name(raw)
        if name == b"from":
            if placed_from:  # a second From is malformed; keep exactly one
                continue
            placed_from = True
            out.append(new_from)
            if new_reply is not None and not placed_reply:
                out.append(new_reply)
                placed_reply = True
            if new_sender is not None and not placed_sender:
                out.append(new_sender)
                placed_sender = True
        elif name == b"reply-to" and new_reply is not None:
            if not placed_reply:
                out.append(new_reply)
                placed_reply = True
        elif name == b"sender":
            if new_sender is not None and not placed_sender:
                out.append(new_sender)
                placed_sender = True
        else:
            out.append(raw)
    if not placed_from:
        extra = (new_reply if new_reply is not None and not placed_reply else b"") + (
            new_sender if new_sender is not None and not placed_sender else b""
        )
        out.insert(0, new_from + extra)
    return b"".join(out) + body


# ---------------------------------------------------------------- Date at hand-over


def format_date(date: datetime) -> str:
    """A Date header value (RFC 5322 date-time) for ``date``; a naive time is taken as UTC."""
    if date.tzinfo is None:  # a naive time would serialize as "-0000" (unknown zone)
        date = date.replace(tzinfo=UTC)
    return format_datetime(date)


def stamp_date(mime: bytes, date_value: str) -> bytes:
    """The message with its Date header set to ``date_value`` (inserted if it has none); every other byte as it was.

    A message can wait in the outbox for hours or days (quota, retry,
    ``--queue-only``); its Date must say when it was handed to the server,
    or receivers score it as stale. The stored bytes are not changed, so the
    Message-ID and everything else stay the same on every attempt. The usual
    case (our own messages: one ``Date: `` line) is one search and one slice;
    anything else goes through the field-by-field path.
    """
    check_header_text(date_value, where="Date")
    linesep = b"\r\n" if b"\r\n" in mime[: mime.find(b"\n") + 1] else b"\n"
    head_end = mime.find(linesep * 2)
    if head_end < 0:
        head_end = len(mime)
    new = b"Date: " + date_value.encode("ascii")
    marker = linesep + b"Date: "
    start = mime.find(marker, 0, head_end)
    if start >= 0 and mime[:head_end].lower().count(linesep + b"date:") == 1:  # exactly one Date field
        start += len(linesep)
        stop = mime.find(linesep, start)
        if stop < 0:
            stop = len(mime)
        if mime[stop + len(linesep) : stop + len(linesep) + 1] not in (b" ", b"\t"):  # no continuation line
            return mime[:start] + new + mime[stop:]
    if head_end < len(mime):
        head, body = mime[:head_end], mime[head_end + len(linesep) :]  # body keeps the blank separator line
    else:  # headers only
        head, body = mime.removesuffix(linesep), b""
    out: list[bytes] = []
    placed = False
    for raw in _split_fields(head, linesep) if head else []:
        if _field_name(raw) == b"date":
            if not placed:  # a second Date is malformed; keep exactly one
                out.append(new + linesep)
                placed = True
            continue
        out.append(raw)
    if not placed:
        out.append(new + linesep)
    return b"".join(out) + (body if body else linesep)
