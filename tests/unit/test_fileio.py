"""watcher.fileio: atomic writes, tables, label files and safe names, for daemon and DAG."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from watcher.errors import SourceError
from watcher.fileio import (
    LabelFileError,
    read_label_file,
    read_table,
    safe_file_name,
    write_atomic,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)


def test_an_atomic_write_replaces_whole_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "PRODUCTION"
    write_text_atomic(target, "1\n", fsync=True)
    write_text_atomic(target, "2\n")
    assert target.read_text() == "2\n"
    write_json_atomic(tmp_path / "d.json", {"a": 1})
    frame = pd.DataFrame({"id": [1, 2], "y": [0.5, 1.5]})
    write_parquet_atomic(tmp_path / "t.parquet", frame)
    pd.testing.assert_frame_equal(read_table(tmp_path / "t.parquet"), frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["PRODUCTION", "d.json", "t.parquet"]


def test_a_failed_write_keeps_the_old_content_and_removes_its_temporary_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")

    def half(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_safe_file_name_keeps_one_name_per_run_id() -> None:
    run_id = "watcher__bikes__2011-03-01T00:00:00+00:00"
    assert safe_file_name(run_id) == "watcher__bikes__2011-03-01T00_00_00_00_00"
    assert "/" not in safe_file_name("../../etc/passwd")


def test_read_table_refuses_other_suffixes(tmp_path: Path) -> None:
    (tmp_path / "t.json").write_text("{}")
    with pytest.raises(SourceError, match=r"neither \.csv nor \.parquet"):
        read_table(tmp_path / "t.json")


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("empty.csv", b"", "is empty (0 bytes)"),
        ("latin.csv", "id,y\n1,caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
        ("bad.parquet", b"PAR1 not really", "is not a readable Parquet file"),
        ("cols.csv", b"id,other\n1,2\n", "lacks column(s) ['y']"),
    ],
)
def test_a_label_file_that_cannot_be_used_says_why(
    tmp_path: Path, name: str, content: bytes, says: str
) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(LabelFileError) as err:
        read_label_file(tmp_path / name, "id", "y")
    assert says in err.value.message


def test_a_label_file_gives_its_id_and_target(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_text("id,extra,y\n1,x,2.5\n")
    assert read_label_file(tmp_path / "l.csv", "id", "y").to_dict("list") == {
        "id": [1],
        "y": [2.5],
    }
