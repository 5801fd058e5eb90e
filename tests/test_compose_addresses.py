"""The fast path of address validation gives exactly what email-validator gives, on thousands of generated addresses."""

from __future__ import annotations

import random
import string
from collections import Counter

import pytest
from email_validator import EmailNotValidError, validate_email

from mailops import compose

ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
NOT_ATEXT = ' "(),:;<>@[\\]'
RFC2142 = ["info", "marketing", "sales", "support", "abuse", "noc", "security", "postmaster", "hostmaster",
           "usenet", "news", "webmaster", "www", "uucp", "ftp"]  # fmt: skip

DOMAINS = [
    "example.org", "Example.COM", "gmail.com", "mail.customer-company.co.uk", "a.b.c.d.e.f.example.net",
    "x.io", "1and1.de", "a-b.example", "bücher.example", "ÖBB.at", "BÜCHER.de", "xn--bcher-kva.example",
    "u\u0308x.com", "例え.jp", "ａｂｃ。com", "Ｅxample.com", "пример.рф", "xn--e1afmkfd.xn--p1ai",
    "مثال.إختبار", "1.xn--4dbc.com", "xn--4dbc.1.com",
    # intranet and test names: accepted (compose._INTRANET_STAND_INS, test_environment)
    "localhost", "example.local", "a.test", "Corp.LOCAL", "x.home.arpa", "bücher.local", "a.localhost", "ab。local",
    # refused: special-use, shapes, literals, characters
    "x.invalid", "foo.onion", "x.arpa", "in-addr.arpa", "localhost.localdomain", "local", "xlocal", "home.arpa",
    "example.com.", ".example.com", "example..com", "-a.com", "a-.com", "ab--c.com", "xn--abc.com", "xn--.com",
    "1.2.3.4", "example.123", "example", "[127.0.0.1]", "[IPv6:::1]", "[1.2.3]", "", " example.com", "example.com ",
    "a_b.com", "a b.com", "exa<mple.com", "<example.com>", '"example".com', "e\u200bxample.com", "⒈.com",
    "\u0301example.com", "example.c\u0338om", "xn--zz-zzz.com",
]  # fmt: skip
IDN_LABEL_CHARS = "üéößçñå例え日本語пример"


def _atom(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(ATEXT) for _ in range(length))


def _dot_atom(rng: random.Random, length: int) -> str:
    """A valid dot-atom of exactly ``length`` characters (length >= 1)."""
    chars = list(_atom(rng, length))
    for i in range(1, length - 1):
        if chars[i - 1] != "." and rng.random() < 0.15:
            chars[i] = "."
    return "".join(chars)


def _local(rng: random.Random) -> str:
    kind = rng.randrange(12)
    if kind <= 3:
        return _dot_atom(rng, rng.choice([1, 2, 5, 8, 12, 20, 40, 62, 63, 64, 65, 66, 80]))
    if kind == 4:  # every atext character, alone or in a word
        c = rng.choice(ATEXT)
        return rng.choice([c, "a" + c + "b", c * 3, c + "." + c])
    if kind == 5:  # dots in every position
        return rng.choice([".a", "a.", "a..b", ".", "..", "a.b.c", "..a", "a.b.", "a...b", ".a.b"])
    if kind == 6:  # RFC 2142 names are case-insensitive
        name = "".join(c.upper() if rng.random() < 0.5 else c for c in rng.choice(RFC2142))
        return rng.choice([name, name, name + "s", name + ".x", "x." + name])
    if kind == 7:
        return rng.choice(['"a b"', '"a@b"', '"abc"', '"a\\"b"', '""', '"a"b', 'a"b"', '"Jane Doe"', '"a..b"'])
    if kind == 8:
        return rng.choice(["jürgen", "u\u0308ser", "日本", "ａbc", "a\u200bb", "Ωmega", "a\u0301"])
    if kind == 9:  # one character that is not atext
        word = _dot_atom(rng, rng.randint(1, 10))
        i = rng.randint(0, len(word))
        return word[:i] + rng.choice(NOT_ATEXT) + word[i:]
    if kind == 10:
        return rng.choice(["", "a@b", "a@b@c", "Jane <jane", "@"])
    return _dot_atom(rng, rng.randint(1, 64)).upper()


def _label(rng: random.Random, length: int, idn: bool) -> str:
    alphabet = string.ascii_lowercase + string.digits + "-"
    label = "".join(rng.choice(alphabet) for _ in range(length))
    if idn:
        i = rng.randrange(length)
        label = label[:i] + rng.choice(IDN_LABEL_CHARS) + label[i + 1 :]
    if rng.random() < 0.9:  # mostly valid hostname labels
        label = "a" + label[1:-1] + "z" if length > 1 else "a"
    return label


def _long_domain(rng: random.Random) -> str:
    """Many labels, some of 63 or 64 characters, about 150-256 characters in all."""
    idn = rng.random() < 0.3
    target = rng.randint(150, 256)
    labels: list[str] = []
    while sum(len(x) + 1 for x in labels) < target:
        labels.append(_label(rng, rng.choice([1, 3, 10, 30, 62, 63, 63, 64]), idn and rng.random() < 0.3))
    domain = ".".join(labels)[: target - 4].strip(".") + "." + rng.choice(["com", "de", "COM", "xn--p1ai", "рф"])
    return domain.upper() if rng.random() < 0.2 else domain


def _domain(rng: random.Random) -> str:
    if rng.random() < 0.85:
        return rng.choice(DOMAINS)
    return _long_domain(rng)


def _reference(addr: str) -> tuple[str, str, str]:
    """email-validator's reading of ``addr``, with mailops' one exception: intranet and test names are addresses.

    Such a domain is checked as the library checks its same-length stand-in
    (compose._INTRANET_STAND_INS), the name put back in the result.
    """
    domain = addr.rpartition("@")[2]
    for suffix, stand_in in compose._INTRANET_STAND_INS.items():
        tail = domain[-len(suffix) :]
        if tail.lower() == suffix and (domain == tail or domain[-len(suffix) - 1] in ".\u3002\uff0e\uff61"):
            r = validate_email(addr[: -len(suffix)] + stand_in, check_deliverability=False, allow_smtputf8=False)
            back = [v[: -len(suffix)] + suffix for v in (r.ascii_email or r.normalized, r.domain, r.ascii_domain)]
            return back[0], back[1], back[2]
    r = validate_email(addr, check_deliverability=False, allow_smtputf8=False, test_environment=True)
    return r.ascii_email or r.normalized, r.domain, r.ascii_domain


def _lengths(domain: str) -> tuple[int, int, int] | None:
    """UTF-8 lengths of a domain as given, normalized (Unicode) and IDNA ASCII; None if the library refuses it."""
    try:
        _, normalized, ascii_domain = _reference("a@" + domain)
    except EmailNotValidError:
        return None
    return len(domain.encode()), len(normalized.encode()), len(ascii_domain)


def _at_the_length_limit(rng: random.Random, domains: list[str]) -> list[str]:
    """Addresses whose length as given, normalized or in IDNA ASCII is 253, 254 or 255 bytes."""
    out = []
    for domain in domains:
        lengths = _lengths(domain)
        if lengths is None:
            continue
        for length in set(lengths):
            for total in (253, 254, 255):
                n = total - 1 - length
                if n >= 1:
                    out.append(_dot_atom(rng, n) + "@" + domain)
    return out


def _generated_addresses(seed: int) -> list[str]:
    rng = random.Random(seed)
    addresses = [_local(rng) + "@" + _domain(rng) for _ in range(3000)]
    addresses += [_local(rng) + "@" + d for d in DOMAINS]
    # Long domains whose forms differ in length: upper case, non-NFC input, Punycode input, 3-byte characters.
    long_domains = [_long_domain(rng) for _ in range(60)]
    for base in ("ü" * 20, "u\u0308" * 20, "例" * 18, "xn--tdaaaaaaaaaaaaaaaaaaaaaaaa", "Ü" * 20):
        for n in range(0, 40, 3):
            filler = ".".join("b" * 63 for _ in range(2)) + "." + "c" * (n + 10)
            long_domains.append(base + "." + filler + ".com")
    addresses += _at_the_length_limit(rng, long_domains)
    addresses += ["@", "@@", "a@", "@example.com", "a@@example.com", "a@b@example.com", "a" * 300 + "@example.com"]
    rng.shuffle(addresses)
    return addresses


def _library(addr: str) -> tuple[str, str]:
    try:
        return "ok", _reference(addr)[0]
    except EmailNotValidError as exc:
        return "error", str(exc)


def _fast(addr: str) -> tuple[str, str]:
    try:
        return "ok", compose._validated_addr_spec(addr)
    except EmailNotValidError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("seed", [1])
def test_fast_address_validation_equals_email_validator(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    compose._validated_addr_spec.cache_clear()
    compose._checked_domain.cache_clear()
    fell_back: set[str] = set()
    library_addr_spec = compose._library_addr_spec

    def counting(addr: str) -> str:
        fell_back.add(addr)
        return library_addr_spec(addr)

    monkeypatch.setattr(compose, "_library_addr_spec", counting)

    outcomes: Counter[str] = Counter()
    for address in _generated_addresses(seed):
        expected = _library(address)
        assert _fast(address) == expected, address
        local = address.rpartition("@")[0]
        plain = local.isascii() and compose.DOT_ATOM_TEXT.match(local) and len(local) <= 64
        if expected[0] == "ok":
            # The fast path really is taken: only unusual local parts fall back.
            assert (address in fell_back) == (not plain), address
            outcomes["fast, accepted" if plain else "library, accepted"] += 1
            if plain and len(expected[1]) == 254:
                outcomes["fast, accepted at 254 bytes"] += 1
        else:
            assert address in fell_back, address
            outcomes[expected[1].split(" (")[0] if "too long" in expected[1] else "rejected"] += 1

    # The generated set covers what it is meant to cover.
    assert outcomes["fast, accepted"] > 500, outcomes
    assert outcomes["fast, accepted at 254 bytes"] > 10, outcomes
    assert outcomes["library, accepted"] > 50, outcomes
    assert outcomes["rejected"] > 1000, outcomes
    for form in ("", " after normalization", " when the part after the @-sign is converted to IDNA ASCII"):
        assert outcomes["The email address is too long" + form] > 10, outcomes


def test_fast_path_examples() -> None:
    compose._validated_addr_spec.cache_clear()
    assert compose._validated_addr_spec("Jane.Doe@Example.COM") == "Jane.Doe@example.com"
    assert compose._validated_addr_spec("PostMaster@bücher.example") == "postmaster@xn--bcher-kva.example"
    assert compose._validated_addr_spec("info.x@ÖBB.at") == "info.x@xn--bb-eka.at"
    with pytest.raises(EmailNotValidError, match="special-use or reserved"):
        compose._validated_addr_spec("jane@example.invalid")
    # intranet and test names are addresses; the special-use name keeps its place, lower-cased
    assert compose._validated_addr_spec("ops@Corp.LOCAL") == "ops@corp.local"
    assert compose._validated_addr_spec("root@localhost") == "root@localhost"
    assert compose._validated_addr_spec("a@bücher.home.arpa") == "a@xn--bcher-kva.home.arpa"
    assert compose._validated_addr_spec("qa@staging.test") == "qa@staging.test"
    assert compose._library_addr_spec("Postmaster@Corp.Local") == "postmaster@corp.local"
