"""suppress: the addresses send leaves out."""

from pathlib import Path
from typing import Annotated

import typer

from . import runtime
from .helptext import examples
from .output import Col, WideOption, out, print_json, show_table
from .runtime import load_config, open_store

suppress_app = typer.Typer(help="The suppression list: addresses send leaves out (hard bounces, opt-outs).")


def _suppress_addresses(values: list[str], where: str) -> list[str]:
    """Each value as one checked address (its addr_spec); InputError naming ``where`` for a bad one."""
    from ..compose import parse_address

    return [parse_address(value, where=where).addr_spec for value in values]


@suppress_app.command("add", epilog=examples("mailops suppress add gone@example.org --reason 'asked to stop'"))
def suppress_add(
    addresses: Annotated[list[str], typer.Argument(help="Addresses to stop sending to.", metavar="ADDR...")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (shown by 'suppress list' and by send).")] = None,
) -> None:
    """Add addresses to the suppression list: send leaves them out from now on."""
    from .. import suppress
    from ..compose import check_header_text

    config = load_config()
    keys = _suppress_addresses(addresses, "suppress add")
    if reason is not None:
        check_header_text(reason, where="--reason")
    store = open_store(config)
    with store.write() as conn:
        added = suppress.add(conn, keys, reason=reason, source="manual", now=runtime.now())
    out(
        f"added {added} address(es) to the suppression list"
        + (f"; {len(keys) - added} already listed" if len(keys) > added else "")
    )


@suppress_app.command("remove", epilog=examples("mailops suppress remove jane@example.org"))
def suppress_remove(
    addresses: Annotated[list[str], typer.Argument(help="Addresses to send to again.", metavar="ADDR...")],
) -> None:
    """Remove addresses from the suppression list."""
    from .. import suppress

    config = load_config()
    keys = _suppress_addresses(addresses, "suppress remove")
    store = open_store(config)
    with store.write() as conn:
        removed = suppress.remove(conn, keys)
    missing = len({k.lower() for k in keys}) - removed
    out(
        f"removed {removed} address(es) from the suppression list" + (f"; {missing} were not listed" if missing else "")
    )


@suppress_app.command("list", epilog=examples("mailops suppress list", "mailops suppress list --json"))
def suppress_list(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False, wide: WideOption = False
) -> None:
    """Show the suppressed addresses, when and why each was added."""
    from .. import suppress
    from ..history import local_time

    config = load_config()
    store = open_store(config)
    with store.read() as conn:
        entries = suppress.entries(conn)
    if json_out:
        print_json(
            [{"address": e.address, "added_at": e.added_at, "reason": e.reason, "source": e.source} for e in entries]
        )
        return
    if not entries:
        out("the suppression list is empty")
        return
    tz = config.timezone
    show_table(
        "suppressed",
        ["address", Col("added", cut=False), Col("source", cut=False), "reason"],
        [[e.address, local_time(e.added_at, tz, zone=True), e.source, e.reason or ""] for e in entries],
        wide=wide,
    )


@suppress_app.command("import", epilog=examples("mailops suppress import bounces.txt --reason 'old list'"))
def suppress_import(
    file: Annotated[Path, typer.Argument(help="One address per line, or a CSV file with an 'email' column.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (default: imported from FILE).")] = None,
) -> None:
    """Add every address of a file to the suppression list; a bad address stops the import (nothing added)."""
    from .. import suppress
    from ..compose import check_header_text, parse_address

    config = load_config()
    lines = suppress.read_import_file(file)
    keys = [parse_address(text, where=f"{file} line {number}").addr_spec for number, text in lines]
    text = reason if reason is not None else f"imported from {file.name}"
    check_header_text(text, where="--reason")
    store = open_store(config)
    with store.write() as conn:
        added = suppress.add(conn, keys, reason=text, source="import", now=runtime.now())
    out(
        f"imported {len(keys)} address(es) from {file}: {added} new, "
        f"{len({k.lower() for k in keys}) - added} already listed"
    )
