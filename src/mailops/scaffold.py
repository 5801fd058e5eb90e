"""Starter files written by ``mailops init`` and by the demo."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError

STARTER_CONFIG = """\
# senders.yaml - see senders.yaml.example in the mailops repository for every key.
# Passwords never go here: run 'mailops password set sales' to keep it in the keyring
# (or set MAILOPS_PASSWORD_SALES / password_command on a headless machine).
timezone: UTC            # daily and monthly quotas roll over at midnight here
templates: templates     # folder of templates/NAME/{subject.txt,body.txt,body.html}

defaults:
  # A provider preset fills host, port, security and documented limits: gmail, google-workspace,
  # microsoft365, outlook, yahoo, icloud, fastmail, zoho, amazon-ses (with region:), sendgrid,
  # mailgun. Keys you write yourself win; 'mailops doctor' shows each value and where it came from.
  # For your own server, drop provider and set host, port and security (starttls | ssl | none).
  provider: gmail

senders:
  sales:
    email: sales@example.com
    name: Example Sales
    daily_limit: 500

routes:
  default: sales

groups:
  admins:
    - Admin <admin@example.com>
"""

EXAMPLE_SUBJECT = "Your subscription renews on {{ renewal_date }}\n"
EXAMPLE_BODY = """\
Hello {{ name }},

your {{ plan }} subscription renews on {{ renewal_date }}.

Regards,
{{ sender.name }}
"""
EXAMPLE_HTML = """\
<p>Hello {{ name }},</p>
<p>your <b>{{ plan }}</b> subscription renews on {{ renewal_date }}.</p>
<p>Regards,<br>{{ sender.name }}</p>
"""


def write_template(templates_dir: Path, name: str) -> list[Path]:
    """Write the example renewal template into ``templates_dir/name``."""
    folder = templates_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    files = {"subject.txt": EXAMPLE_SUBJECT, "body.txt": EXAMPLE_BODY, "body.html": EXAMPLE_HTML}
    out = []
    for filename, text in files.items():
        path = folder / filename
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def write_starter(directory: Path) -> list[Path]:
    """Create ``senders.yaml`` and ``templates/renewal/`` in ``directory``; refuse to overwrite."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(
            f"{directory} is a file, not a folder; pass a folder for senders.yaml and templates/"
        ) from None
    except NotADirectoryError:
        raise UsageError(f"{directory}: a part of the path is a file, not a folder; pass a folder") from None
    except OSError as exc:
        raise UsageError(f"{directory}: cannot create the folder: {exc.strerror or exc}; pass another folder") from None
    config = directory / "senders.yaml"
    if config.exists():
        raise UsageError(f"{config} already exists; edit it, or run 'mailops init' in another folder")
    try:
        config.write_text(STARTER_CONFIG, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{config}: cannot write: {exc.strerror or exc}; pass a folder you may write to") from None
    created = [config]
    if not (directory / "templates" / "renewal").exists():
        created += write_template(directory / "templates", "renewal")
    return created
