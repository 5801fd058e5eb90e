"""Provider presets: what ``provider: NAME`` on a sender fills in, and the hints that go with it.

A preset holds only what the provider documents: its SMTP host, port and
security, the login name when it is not the address, the sending limits and
maximum message size where the provider publishes them (senders.yaml.example
cites each source), and whether its daily limit counts messages or
recipients. Anything a provider does not publish (or publishes per account,
such as Amazon SES's sending quota) is left out rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .compose import is_intranet_domain


@dataclass(frozen=True)
class Provider:
    """One provider's documented settings and its hints."""

    name: str
    title: str  # for messages: "Microsoft 365"
    settings: dict[str, Any] = field(default_factory=dict)  # sender keys the preset fills
    auth_hint: str = ""  # after a 535: what usually fixes a refused login at this provider ({key}: the sender)
    needs_username: str | None = None  # the login is not the address: why, for the error when it is missing
    regional: bool = False  # host depends on ``region:``


_APP_PASSWORD = "'mailops password set {key}'"

PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "gmail",
            "Gmail",
            {"host": "smtp.gmail.com", "port": 587, "security": "starttls"},
            auth_hint=(
                "Gmail refuses the account password over SMTP: create an app password "
                "(https://myaccount.google.com/apppasswords, needs 2-Step Verification) and store it with "
                f"{_APP_PASSWORD}, or log in with OAuth2 (an 'oauth2:' mapping)"
            ),
        ),
        Provider(
            "google-workspace",
            "Google Workspace",
            # https://support.google.com/a/answer/166852: 2,000 messages per day per user
            {
                "host": "smtp.gmail.com",
                "port": 587,
                "security": "starttls",
                "daily_limit": 2000,
                "limit_unit": "messages",
            },
            auth_hint=(
                "Google Workspace refuses the login: use an app password (2-Step Verification on; the admin may "
                f"have to allow it) stored with {_APP_PASSWORD}, or log in with OAuth2 (an 'oauth2:' mapping)"
            ),
        ),
        Provider(
            "microsoft365",
            "Microsoft 365",
            # https://learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/exchange-online-limits:
            # 10,000 recipients per day, 30 messages per minute (SMTP client submission), 35 MB send size by default
            {
                "host": "smtp.office365.com",
                "port": 587,
                "security": "starttls",
                "daily_limit": 10000,
                "limit_unit": "recipients",
                "per_minute": 30,
                "max_message_size": 35 * 1024 * 1024,
            },
            auth_hint=(
                "Microsoft 365 refuses the login: SMTP AUTH may be disabled for the mailbox (the admin turns on "
                "'Authenticated SMTP' for it), or basic authentication is off for the tenant: log in with OAuth2 "
                f"(an 'oauth2:' mapping); with basic auth allowed, check the password with {_APP_PASSWORD}"
            ),
        ),
        Provider(
            "outlook",
            "Outlook.com",
            {"host": "smtp-mail.outlook.com", "port": 587, "security": "starttls"},
            auth_hint=(
                "Outlook.com refuses the login: with two-step verification on, create an app password "
                f"(https://account.microsoft.com/security) and store it with {_APP_PASSWORD}, or log in with OAuth2 "
                "(an 'oauth2:' mapping)"
            ),
        ),
        Provider(
            "yahoo",
            "Yahoo Mail",
            {"host": "smtp.mail.yahoo.com", "port": 465, "security": "ssl"},
            auth_hint=(
                "Yahoo refuses the account password over SMTP: generate an app password in Yahoo's Account "
                f"security settings and store it with {_APP_PASSWORD}"
            ),
        ),
        Provider(
            "icloud",
            "iCloud Mail",
            # https://support.apple.com/en-us/102198: 1,000 recipients per day, 20 MB per message
            {
                "host": "smtp.mail.me.com",
                "port": 587,
                "security": "starttls",
                "daily_limit": 1000,
                "limit_unit": "recipients",
                "max_message_size": 20_000_000,
            },
            auth_hint=(
                "iCloud refuses the login: use an app-specific password (https://account.apple.com, Sign-In and "
                f"Security) stored with {_APP_PASSWORD}, and your main iCloud address as username"
            ),
        ),
        Provider(
            "fastmail",
            "Fastmail",
            {"host": "smtp.fastmail.com", "port": 465, "security": "ssl"},
            auth_hint=(
                "Fastmail refuses the login: create an app password (Settings, Privacy & Security) with SMTP "
                f"access and store it with {_APP_PASSWORD}"
            ),
        ),
        Provider(
            "zoho",
            "Zoho Mail",
            {"host": "smtp.zoho.com", "port": 465, "security": "ssl"},
            auth_hint=(
                "Zoho refuses the login: with two-factor authentication on, use an application-specific password "
                f"stored with {_APP_PASSWORD}; an organization account may need host smtppro.zoho.com or your "
                "data centre's host (smtp.zoho.eu, smtp.zoho.in)"
            ),
        ),
        Provider(
            "amazon-ses",
            "Amazon SES",
            # https://docs.aws.amazon.com/ses/latest/dg/quotas.html: quotas count recipients; 40 MB per message
            # over SMTP. The daily quota itself is per account: set daily_limit to yours.
            {"port": 587, "security": "starttls", "limit_unit": "recipients", "max_message_size": 40_000_000},
            auth_hint=(
                "Amazon SES refuses the login: use the SMTP credentials made for SES in that region (not the AWS "
                f"access key), username from them and the SMTP password stored with {_APP_PASSWORD}"
            ),
            needs_username="the SMTP user name of your SES SMTP credentials (not the email address)",
            regional=True,
        ),
        Provider(
            "sendgrid",
            "SendGrid",
            # https://www.twilio.com/docs/sendgrid/for-developers/sending-email/integrating-with-the-smtp-api
            {"host": "smtp.sendgrid.net", "port": 587, "security": "starttls", "username": "apikey"},
            auth_hint=(
                "SendGrid refuses the login: the username is the word 'apikey' and the password an API key with "
                f"Mail Send permission, stored with {_APP_PASSWORD}"
            ),
        ),
        Provider(
            "mailgun",
            "Mailgun",
            # https://documentation.mailgun.com/docs/mailgun/user-manual/sending-messages/send-http: 25 MB at most
            {"host": "smtp.mailgun.org", "port": 587, "security": "starttls", "max_message_size": 25_000_000},
            auth_hint=(
                "Mailgun refuses the login: use the domain's SMTP credentials "
                "(username like postmaster@mg.example.com) "
                f"and store the SMTP password with {_APP_PASSWORD}; an EU domain needs region: eu"
            ),
        ),
    )
}

#: Presets that deliver to the public Internet: an intranet address through one of them will not arrive.
PUBLIC = frozenset(PROVIDERS)

_AWS_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")


class ProviderError(ValueError):
    """A provider name or region that is not known; the message says which ones are."""


def known() -> str:
    """The known provider names, for messages."""
    return ", ".join(PROVIDERS)


def preset(name: str, region: str | None) -> dict[str, Any]:
    """The sender keys ``provider: name`` fills (with ``region`` where the host depends on it).

    ProviderError for an unknown name, a missing or malformed region.
    """
    provider = PROVIDERS.get(name)
    if provider is None:
        raise ProviderError(f"unknown provider {name!r}; known providers: {known()}")
    settings = dict(provider.settings)
    if name == "amazon-ses":
        if not region:
            raise ProviderError(
                "amazon-ses needs 'region:' (the AWS region of your SES identity, such as eu-west-1 or us-east-1)"
            )
        if not _AWS_REGION_RE.fullmatch(region):
            raise ProviderError(f"region {region!r} is not an AWS region name such as eu-west-1 or us-east-1")
        settings["host"] = f"email-smtp.{region}.amazonaws.com"
    elif name == "mailgun" and region:
        if region not in ("us", "eu"):
            raise ProviderError(f"mailgun's region is us or eu (got {region!r})")
        if region == "eu":
            settings["host"] = "smtp.eu.mailgun.org"
    elif region:
        raise ProviderError(f"'region' applies only to amazon-ses and mailgun, not {name}; remove it")
    return settings


def auth_hint(provider: str | None, sender_key: str) -> str | None:
    """The provider's one-line hint after its server refused the login (a 535), or None without a provider."""
    found = PROVIDERS.get(provider or "")
    return found.auth_hint.format(key=sender_key) if found else None


def intranet_warning(provider: str | None, sender_key: str, addresses: list[str]) -> str | None:
    """One line if any of ``addresses`` (addr-specs) is at an intranet or test domain and would go through a public
    provider, which cannot deliver it; None otherwise."""
    if provider not in PUBLIC:
        return None
    internal = [a for a in addresses if is_intranet_domain(a.rpartition("@")[2])]
    if not internal:
        return None
    more = f" and {len(internal) - 1} more" if len(internal) > 1 else ""
    title = PROVIDERS[provider].title
    return (
        f"warning: {sender_key} sends through {title}, which delivers on the public Internet: {internal[0]}{more} "
        "is an intranet or test address it cannot deliver; route such mail through your own relay"
    )
