"""Mail-merge data files: CSV (streamed), JSON and YAML, one row per message.

CSV is read with the csv module as UTF-8 (a BOM from Excel is dropped, quoted
newlines work) and streamed, so a 100,000-row file is never held in memory.
JSON and YAML are loaded whole (their parsers have no streaming mode) and must
be a list of objects/mappings. Problems with the file as a whole are raised as
InputError when ``read_rows`` is called, before any row is yielded.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from .errors import InputError
from .files import read_text_file, regular_file_problem
from .limits import DATA_FILE_MAX_BYTES, MAX_DEPTH, nested_deeper_than
from .wording import term

KINDS = {".csv": "csv", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}
_DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class DataRow:
    """One data row: its 1-based number (header not counted), its values and a label for messages."""

    number: int
    values: dict[str, Any]
    label: str  # e.g. "customers.csv row 3"


def _kind(path: Path) -> str:
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise InputError(
            f"{path}: unsupported data file type {path.suffix or '(no extension)'!r}; "
            "use a .csv, .json, .yaml or .yml file"
        )
    return kind


def _open_text(path: Path) -> IO[str]:
    try:
        # newline="" lets the csv module handle newlines inside quoted values.
        return open(path, encoding="utf-8-sig", newline="")  # closed by the row generator
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; check the {term('--data')} path") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a data file; pass a .csv, .json or .yaml file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}; check the file's permissions") from None


def _check_regular(path: Path) -> None:
    """InputError unless ``path`` is a regular file: /dev/zero or a FIFO would never end."""
    problem = regular_file_problem(path)
    if problem is None:
        return
    if problem.startswith("no such file"):
        raise InputError(f"{path}: no such file; check the {term('--data')} path")
    if problem.startswith("is a folder"):
        raise InputError(f"{path}: is a folder, not a data file; pass a .csv, .json or .yaml file")
    raise InputError(f"{path}: {problem}")


def _read_text(path: Path) -> str:
    return read_text_file(path, DATA_FILE_MAX_BYTES)


def _too_deep(path: Path) -> InputError:
    return InputError(
        f"{path}: values are nested too deeply (more than {MAX_DEPTH} levels of lists and mappings); flatten the data"
    )


def _no_rows(path: Path) -> InputError:
    return InputError(f"{path}: no data rows; add one row per message (the file is empty or holds only a header)")


def _label(path: Path, number: int) -> str:
    return f"{path.name} row {number}"


# ---------------------------------------------------------------- CSV


def _sniff_delimiter(first_line: str) -> str:
    # Excel in many European locales writes ';'. Comma wins whenever the header has one.
    if "," in first_line:
        return ","
    counts = {d: first_line.count(d) for d in _DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _is_blank(record: list[str]) -> bool:
    # Blank lines and all-empty rows (",,,") that spreadsheets leave at the end carry no message.
    return not any(cell.strip() for cell in record)


class _CsvReader:
    """csv.reader with the delimiter guessed from the first line and errors made one-line InputErrors."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self.handle = handle
        try:
            first_line = handle.readline()
            handle.seek(0)
        except UnicodeDecodeError:
            raise InputError(f"{path}: not UTF-8 text; save the file as UTF-8 (in Excel: 'CSV UTF-8')") from None
        self.delimiter = _sniff_delimiter(first_line)
        # strict: a stray quote is a broken file, not a value to guess at.
        self.reader = csv.reader(handle, delimiter=self.delimiter, strict=True)

    def next_record(self) -> list[str] | None:
        """The next non-blank record, or None at the end of the file."""
        while True:
            try:
                record = next(self.reader)
            except StopIteration:
                return None
            except UnicodeDecodeError:
                raise InputError(
                    f"{self.path}: not UTF-8 text (near line {self.reader.line_num + 1}); "
                    "save the file as UTF-8 (in Excel: 'CSV UTF-8')"
                ) from None
            except csv.Error as exc:
                raise InputError(
                    f"{self.path} line {self.reader.line_num}: invalid CSV: {exc}; "
                    "put values that contain quotes, delimiters or line breaks in double quotes"
                ) from None
            if not _is_blank(record):
                return record


def _csv_header(path: Path, record: list[str]) -> list[str]:
    header = [cell.strip() for cell in record]
    seen: dict[str, int] = {}
    for index, name in enumerate(header, start=1):
        if not name:
            raise InputError(
                f"{path}: column {index} of the header has no name; name every column or delete the empty one"
            )
        if name in seen:
            raise InputError(
                f"{path}: column {name!r} appears twice in the header (columns {seen[name]} and {index}); "
                "rename one of them"
            )
        seen[name] = index
    return header


def _csv_values(path: Path, header: list[str], record: list[str], number: int, delimiter: str) -> dict[str, Any]:
    if len(record) > len(header):
        # Trailing empty cells (a spreadsheet's stray delimiters) are harmless; real extra values are not.
        if any(cell.strip() for cell in record[len(header) :]):
            raise InputError(
                f"{path} row {number}: {len(record)} fields but the header has {len(header)} columns; "
                f"put values containing {delimiter!r} in double quotes or add the missing column names"
            )
        record = record[: len(header)]
    elif len(record) < len(header):
        record = record + [""] * (len(header) - len(record))
    return dict(zip(header, record, strict=True))


def _csv_rows(path: Path) -> Iterator[DataRow]:
    handle = _open_text(path)
    try:
        reader = _CsvReader(path, handle)
        header_record = reader.next_record()
        if header_record is None:
            raise _no_rows(path)
        header = _csv_header(path, header_record)
        first = reader.next_record()
        if first is None:
            raise _no_rows(path)
        first_row = DataRow(1, _csv_values(path, header, first, 1, reader.delimiter), _label(path, 1))
    except BaseException:
        handle.close()
        raise
    return _csv_stream(path, handle, reader, header, first_row)


def _csv_stream(
    path: Path, handle: IO[str], reader: _CsvReader, header: list[str], first: DataRow
) -> Iterator[DataRow]:
    with handle:
        yield first
        number = 1
        while (record := reader.next_record()) is not None:
            number += 1
            yield DataRow(number, _csv_values(path, header, record, number, reader.delimiter), _label(path, number))


# ---------------------------------------------------------------- JSON / YAML


def _type_name(value: Any, kind: str) -> str:
    names = {
        dict: "an object" if kind == "json" else "a mapping",
        list: "a list",
        str: "a string",
        bool: "true/false",
        type(None): "null",
    }
    return names.get(type(value), f"a {type(value).__name__}")


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json silently keeps the last of two equal keys; for a data row that hides a mistake.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _load_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise _too_deep(path) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path} line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}; fix the file"
        ) from None
    except _DuplicateKey as exc:
        raise InputError(f"{path}: an object has the key {exc.key!r} twice; remove one of them") from None
    if nested_deeper_than(data, MAX_DEPTH):
        raise _too_deep(path)
    return data


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases: ``*name`` lets a few lines expand to gigabytes (a "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]  # types-PyYAML leaves peek_event untyped
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a data file (write each value out)", event.start_mark
            )
        return super().compose_node(parent, index)


def _load_yaml(path: Path) -> Any:
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: no Python objects
    except RecursionError:
        raise _too_deep(path) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path} line {mark.line + 1} column {mark.column + 1}" if mark else str(path)
        raise InputError(f"{where}: invalid YAML: {exc.problem or exc.context}; fix the file") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: invalid YAML: {exc}; fix the file") from None
    if nested_deeper_than(data, MAX_DEPTH):
        raise _too_deep(path)
    return data


def _check_items(path: Path, data: Any, kind: str) -> list[dict[str, Any]]:
    thing, a_thing = ("object", "an object") if kind == "json" else ("mapping", "a mapping")
    example = '[{"email": "jane@example.com", "name": "Jane"}]' if kind == "json" else "- email: jane@example.com"
    if data is None or data == []:
        raise _no_rows(path)
    if not isinstance(data, list):
        raise InputError(f"{path}: must be a list of {thing}s such as {example} (got {_type_name(data, kind)})")
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise InputError(
                f"{path}: item [{index}] (row {index + 1}) is {_type_name(item, kind)}, not {a_thing}; "
                f"every item must be {a_thing} such as {example}"
            )
        for key in item:
            if not isinstance(key, str):
                raise InputError(f"{path}: item [{index}] (row {index + 1}): key {key!r} must be text; quote it")
            if not key.strip():
                raise InputError(f"{path}: item [{index}] (row {index + 1}) has an empty key; name every field")
    return data


def _object_rows(path: Path, items: list[dict[str, Any]]) -> Iterator[DataRow]:
    for index, item in enumerate(items, start=1):
        yield DataRow(index, dict(item), _label(path, index))


# ---------------------------------------------------------------- public API


def read_rows(path: Path) -> Iterator[DataRow]:
    """The rows of a CSV, JSON or YAML data file; file-level problems raise InputError before the first row.

    CSV rows are streamed from disk; a malformed CSV row further down raises
    InputError when it is reached.
    """
    path = Path(path)
    kind = _kind(path)
    _check_regular(path)
    if kind == "csv":
        return _csv_rows(path)
    data = _load_json(path) if kind == "json" else _load_yaml(path)
    return _object_rows(path, _check_items(path, data, kind))


def count_rows(path: Path) -> int:
    """Number of data rows (for a progress bar) without building them; same errors as ``read_rows``."""
    path = Path(path)
    kind = _kind(path)
    _check_regular(path)
    if kind != "csv":
        data = _load_json(path) if kind == "json" else _load_yaml(path)
        return len(_check_items(path, data, kind))
    with _open_text(path) as handle:
        reader = _CsvReader(path, handle)
        if reader.next_record() is None:
            raise _no_rows(path)
        count = 0
        while reader.next_record() is not None:
            count += 1
    if not count:
        raise _no_rows(path)
    return count
