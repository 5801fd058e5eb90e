"""Starter files written by ``mailops init`` (and the demo's template), and the next steps it prints.

Every starter file is one entry of :func:`starter_files` (a path relative to
the target folder and its text), so adding a file is adding an entry. The
files fit together: the template's variables are the sample data's columns,
and the route the next steps use is in the starter config.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import UsageError

#: the names the starter files and the next steps share
SENDER = "sales"
ROUTE = "renewal"
TEMPLATE = "renewal"
DATA_FILE = "customers.csv"
BATCH = "first-renewals"
#: the port `mailops dev-server` listens on by default (the commented block of the starter config uses it)
DEV_SERVER_PORT = 8025

STARTER_CONFIG = f"""\
# senders.yaml - see senders.yaml.example in the mailops repository for every key.
# Passwords never go here: run 'mailops password set {SENDER}' to keep it in the keyring
# (or set MAILOPS_PASSWORD_{SENDER.upper()} / password_command on a headless machine).
timezone: UTC            # daily and monthly quotas roll over at midnight here
templates: templates     # folder of templates/NAME/{{subject.txt,body.txt,body.html}}

defaults:
  # A provider preset fills host, port, security and documented limits: gmail, google-workspace,
  # microsoft365, outlook, yahoo, icloud, fastmail, zoho, amazon-ses (with region:), sendgrid,
  # mailgun. Keys you write yourself win; 'mailops doctor' shows each value and where it came from.
  # For your own server, drop provider and set host, port and security (starttls | ssl | none).
  provider: gmail

senders:
  {SENDER}:
    email: sales@example.com
    name: Example Sales
    daily_limit: 500
    # To try mailops without a real mailbox first, run 'mailops dev-server' in another terminal
    # and uncomment the next five lines: mail then goes to that capture server on this machine.
    # provider: null
    # host: 127.0.0.1
    # port: {DEV_SERVER_PORT}
    # security: none
    # auth: false

  # A Microsoft 365 or Google Workspace / Gmail mailbox logs in with OAuth2 instead of a password
  # (Microsoft turns basic authentication off): uncomment, put in your app's client ID, then run
  # 'mailops oauth login support' (README: "Microsoft 365 walkthrough", "Gmail / Google Workspace walkthrough").
  # support:
  #   email: support@example.com
  #   provider: microsoft365          # or google-workspace / gmail (then drop tenant)
  #   oauth2:
  #     client_id: 00000000-0000-0000-0000-000000000000
  #     tenant: example.com           # Microsoft only: your tenant ID or domain
  #     # client_secret_command: pass show mail/oauth-client-secret   # Google desktop clients have one

routes:
  {ROUTE}: {SENDER}           # a purpose and the sender(s) for it: [first, fallback] fails over
  default: {SENDER}           # used when 'mailops send' has no --route

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
TEMPLATE_FILES = {"subject.txt": EXAMPLE_SUBJECT, "body.txt": EXAMPLE_BODY, "body.html": EXAMPLE_HTML}

#: the sample data: one message per row; ``email`` and ``name`` address it, the rest feed the template
SAMPLE_DATA = """\
email,name,plan,renewal_date
anna.schmidt@example.com,Anna Schmidt,Pro,2026-12-01
somchai@example.com,สมชาย ใจดี,Team,2026-12-03
jules@example.com,Jules Müller 🚀,Basic,2026-12-05
"""


def starter_files() -> dict[str, str]:
    """Every file ``mailops init`` writes: path relative to the target folder (``/``-separated) → its text."""
    files = {"senders.yaml": STARTER_CONFIG}
    files.update({f"templates/{TEMPLATE}/{name}": text for name, text in TEMPLATE_FILES.items()})
    files[DATA_FILE] = SAMPLE_DATA
    return files


@dataclass(frozen=True)
class Written:
    """One starter file and what ``init`` did with it."""

    path: Path
    action: Literal["created", "replaced", "kept"]  # kept: it existed and --force was not given


def write_template(templates_dir: Path, name: str) -> list[Path]:
    """Write (or overwrite) the example renewal template into ``templates_dir/name``; for the demo's own folder."""
    folder = templates_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for filename, text in TEMPLATE_FILES.items():
        path = folder / filename
        path.write_text(text, encoding="utf-8")
        out.append(path)
    return out


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"{folder} is a file, not a folder; pass a folder for senders.yaml and templates/") from None
    except NotADirectoryError:
        raise UsageError(f"{folder}: a part of the path is a file, not a folder; pass a folder") from None
    except OSError as exc:
        raise UsageError(f"{folder}: cannot create the folder: {exc.strerror or exc}; pass another folder") from None


def _create(path: Path, text: str) -> None:
    """Write a new file; exclusive creation, so a file (or symlink) that appeared meanwhile is never overwritten."""
    with path.open("x", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def _replace(path: Path, text: str) -> None:
    """Replace ``path`` itself (a symlink is replaced, never written through) in one rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_starter(directory: Path, *, force: bool = False) -> list[Written]:
    """Write the starter files into ``directory``.

    Without ``force`` an existing senders.yaml stops everything (exit 2, nothing
    written): the folder is already set up. Any other starter file that exists is
    kept and reported as ``kept``. With ``force`` every starter file is replaced.
    """
    _make_folder(directory)
    config = directory / "senders.yaml"
    if not force and os.path.lexists(config):
        raise UsageError(
            f"{config} already exists; edit it, or run 'mailops init --force' to replace the starter files "
            f"(senders.yaml, templates/{TEMPLATE}/, {DATA_FILE}), or 'mailops init' in another folder"
        )
    done = []
    for relative, text in starter_files().items():
        path = directory / relative
        _make_folder(path.parent)
        existed = os.path.lexists(path)
        try:
            if existed and not force:
                done.append(Written(path, "kept"))
                continue
            if existed:
                _replace(path, text)
            else:
                _create(path, text)
        except FileExistsError:  # created by someone else between the check and the write
            done.append(Written(path, "kept"))
            continue
        except OSError as exc:
            raise UsageError(f"{path}: cannot write: {exc.strerror or exc}; pass a folder you may write to") from None
        done.append(Written(path, "replaced" if existed else "created"))
    return done


def next_steps(
    directory: Path, *, keyring_usable: bool, keyring_name: str, env_var: str, cwd: Path | None = None
) -> list[str]:
    """The lines ``mailops init`` prints after writing the files: commands that work on this machine.

    ``keyring_usable``/``keyring_name`` come from the keyring library's own
    choice of backend (:func:`mailops.secrets.backend_info`); without a usable
    one, the password goes in ``env_var`` (or a password_command) instead.
    """
    send = f"mailops send --route {ROUTE} --template {TEMPLATE} --data {DATA_FILE}"
    lines = ["next steps:"]
    here = (cwd or Path.cwd()).resolve()
    if directory.resolve() != here:
        lines += ["  0. go to the new folder (mailops reads ./senders.yaml):", f"     cd {directory}"]
    lines.append("  1. edit senders.yaml: your sender's address and provider (or host), routes, groups")
    if keyring_usable:
        lines += [
            f"  2. store the password of sender '{SENDER}' in the keyring ({keyring_name}):",
            f"     mailops password set {SENDER}",
        ]
    else:
        lines += [
            f"  2. no usable keyring here ({keyring_name});",
            f"     give the password of sender '{SENDER}' in the environment instead",
            "     (read -s keeps it off the screen and out of the shell history):",
            f"     read -rs {env_var} && export {env_var}",
            "     (for cron: password_command: on the sender in senders.yaml)",
        ]
    lines += [
        "  3. log in once, to check the server and the password:",
        f"     mailops test-smtp {SENDER}",
        f"  4. render the first two messages from {DATA_FILE} without sending:",
        f"     {send} --dry-run --preview 2",
        "  5. send them all, then look at the log:",
        f"     {send} --batch {BATCH}",
        "     mailops log",
    ]
    return lines
