"""Mail-merge data files: CSV (streamed), JSON and YAML, and every way they can be wrong."""

from __future__ import annotations

import tracemalloc
import types
from pathlib import Path

import pytest

from mailops.datafiles import DataRow, count_rows, read_rows
from mailops.errors import InputError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_csv_rows_numbers_and_labels(tmp_path: Path) -> None:
    path = write(tmp_path / "customers.csv", "email,name\r\na@example.com,Ann\r\nb@example.com,Bob\r\n")
    rows = list(read_rows(path))
    assert rows == [
        DataRow(1, {"email": "a@example.com", "name": "Ann"}, "customers.csv row 1"),
        DataRow(2, {"email": "b@example.com", "name": "Bob"}, "customers.csv row 2"),
    ]
    assert count_rows(path) == 2


def test_csv_bom_dropped_and_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(
        "\ufeffemail,note\n".encode() + 'a@example.com,"line one\nline two, with comma"\nb@example.com,Grüße\n'.encode()
    )
    rows = list(read_rows(path))
    assert list(rows[0].values) == ["email", "note"]  # no "\ufeffemail"
    assert rows[0].values["note"] == "line one\nline two, with comma"
    assert rows[1].values["note"] == "Grüße"
    assert [r.number for r in rows] == [1, 2]
    assert count_rows(path) == 2


def test_csv_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.write("email,n\n")
        for i in range(30_000):
            handle.write(f"u{i}@example.com,{i}\n")
    assert path.stat().st_size > 500_000
    tracemalloc.start()
    try:
        rows = read_rows(path)
        assert isinstance(rows, types.GeneratorType)
        first = next(rows)
        assert first.values == {"email": "u0@example.com", "n": "0"}
        last = None
        for last in rows:  # noqa: B007 - only the last row is kept: the rows must stream, not be listed
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert last is not None and last.number == 30_000
    # holding 30,000 rows would take over 10 MB; streaming stays near one read buffer
    assert peak < 1_000_000, peak
    assert count_rows(path) == 30_000


def test_csv_semicolon_delimiter_from_excel(tmp_path: Path) -> None:
    path = write(tmp_path / "eu.csv", "email;name;amount\na@example.com;Ann;1,50\n")
    assert next(read_rows(path)).values == {"email": "a@example.com", "name": "Ann", "amount": "1,50"}


def test_csv_blank_lines_skipped_short_rows_padded(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "email,name,plan\n\na@example.com\n,,\nb@example.com,Bob,Pro,,\n")
    rows = list(read_rows(path))
    assert [r.values for r in rows] == [
        {"email": "a@example.com", "name": "", "plan": ""},
        {"email": "b@example.com", "name": "Bob", "plan": "Pro"},
    ]
    assert [r.number for r in rows] == [1, 2]
    assert count_rows(path) == 2


def test_csv_header_names_are_stripped(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", " email , name\na@example.com,Ann\n")
    assert next(read_rows(path)).values == {"email": "a@example.com", "name": "Ann"}


def test_csv_row_with_more_fields_than_header(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "email,name\na@example.com,Ann\nb@example.com,Doe, Bob\n")
    rows = read_rows(path)
    assert next(rows).number == 1
    with pytest.raises(InputError) as info:
        next(rows)
    assert str(info.value) == (
        f"{path} row 2: 3 fields but the header has 2 columns; "
        "put values containing ',' in double quotes or add the missing column names"
    )


def test_csv_broken_quote(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", 'email,name\na@example.com,"Ann" x\n')
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == (
        f"{path} line 2: invalid CSV: ',' expected after '\"'; "
        "put values that contain quotes, delimiters or line breaks in double quotes"
    )


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("email,,name", "column 2 of the header has no name; name every column or delete the empty one"),
        ("email,name,email", "column 'email' appears twice in the header (columns 1 and 3); rename one of them"),
        ("email,name, name ", "column 'name' appears twice in the header (columns 2 and 3); rename one of them"),
    ],
)
def test_csv_bad_header(tmp_path: Path, header: str, problem: str) -> None:
    path = write(tmp_path / "c.csv", f"{header}\na@example.com,b,c\n")
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == f"{path}: {problem}"


@pytest.mark.parametrize("text", ["", "\n\n", "email,name\n", "email,name\n,\n"])
def test_no_data_rows(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "customers.csv", text)
    expected = f"{path}: no data rows; add one row per message (the file is empty or holds only a header)"
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == expected
    with pytest.raises(InputError) as info:
        count_rows(path)
    assert str(info.value) == expected


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes("email,name\na@example.com,Müller\n".encode("cp1252"))
    with pytest.raises(InputError) as info:
        list(read_rows(path))
    assert str(info.value) == f"{path}: not UTF-8 text; save the file as UTF-8 (in Excel: 'CSV UTF-8')"


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        read_rows(tmp_path / "nope.csv")
    assert str(info.value) == f"{tmp_path / 'nope.csv'}: no such file; check the --data path"
    folder = tmp_path / "dir.csv"
    folder.mkdir()
    with pytest.raises(InputError) as info:
        count_rows(folder)
    assert str(info.value) == f"{folder}: is a folder, not a data file; pass a .csv, .json or .yaml file"


def test_unsupported_extension(tmp_path: Path) -> None:
    path = write(tmp_path / "list.txt", "email\n")
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == f"{path}: unsupported data file type '.txt'; use a .csv, .json, .yaml or .yml file"
    with pytest.raises(InputError, match="unsupported data file type '\\(no extension\\)'"):
        count_rows(tmp_path / "list")


def test_json_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.json",
        '[{"email": "a@example.com", "amount": 12.5, "items": ["x", "y"]}, {"email": "b@example.com", "vip": null}]',
    )
    rows = list(read_rows(path))
    assert rows == [
        DataRow(1, {"email": "a@example.com", "amount": 12.5, "items": ["x", "y"]}, "c.json row 1"),
        DataRow(2, {"email": "b@example.com", "vip": None}, "c.json row 2"),
    ]
    assert count_rows(path) == 2


def test_json_with_bom(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_bytes('\ufeff[{"email": "a@example.com"}]'.encode())
    assert next(read_rows(path)).values == {"email": "a@example.com"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '{"email": "a@example.com"}',
            'must be a list of objects such as [{"email": "jane@example.com", "name": "Jane"}] (got an object)',
        ),
        (
            '[{"email": "a@example.com"}, "b@example.com"]',
            "item [1] (row 2) is a string, not an object; every item must be an object such as "
            '[{"email": "jane@example.com", "name": "Jane"}]',
        ),
        ('[{"email": "a@example.com", "": 1}]', "item [0] (row 1) has an empty key; name every field"),
        (
            '[{"email": "a@example.com", "email": "b@example.com"}]',
            "an object has the key 'email' twice; remove one of them",
        ),
        ("[]", "no data rows; add one row per message (the file is empty or holds only a header)"),
    ],
)
def test_json_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "c.json", text)
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == f"{path}: {problem}"


def test_json_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json", '[\n  {"email": "a@example.com",}\n]')
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == (
        f"{path} line 2 column 29: invalid JSON: Expecting property name enclosed in double quotes; fix the file"
    )


def test_yaml_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.yml",
        "- email: a@example.com\n  name: Ann\n  due: 2024-05-01\n- email: b@example.com\n  name: สมชาย\n",
    )
    rows = list(read_rows(path))
    assert [r.label for r in rows] == ["c.yml row 1", "c.yml row 2"]
    assert str(rows[0].values["due"]) == "2024-05-01"
    assert rows[1].values == {"email": "b@example.com", "name": "สมชาย"}
    assert count_rows(path) == 2


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("email: a@example.com\n", "must be a list of mappings such as - email: jane@example.com (got a mapping)"),
        (
            "- email: a@example.com\n- just text\n",
            "item [1] (row 2) is a string, not a mapping; every item must be a mapping such as "
            "- email: jane@example.com",
        ),
        ("- email: a@example.com\n  1: x\n", "item [0] (row 1): key 1 must be text; quote it"),
        ("", "no data rows; add one row per message (the file is empty or holds only a header)"),
    ],
)
def test_yaml_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "c.yaml", text)
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value) == f"{path}: {problem}"


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "- email: a@example.com\n  name: [unclosed\n")
    with pytest.raises(InputError) as info:
        read_rows(path)
    assert str(info.value).startswith(f"{path} line 3 column 1: invalid YAML: ")
    assert str(info.value).endswith("; fix the file")
