from __future__ import annotations

from pathlib import Path

import pytest

from pleura.data import REQUIRED_COLUMNS, ManifestError, read_manifest
from pleura.labels import Probe


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text(text)
    return path


def test_reads_folder_or_csv_and_defaults_patient_id(tmp_path):
    path = _write(tmp_path, "id,image,diagnosis,clip_id,probe\na,a.png,covid,c1,linear\nb,b.png,normal,c2,\n")
    rows = read_manifest(tmp_path)
    assert rows == read_manifest(path)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert [r["patient_id"] for r in rows] == ["c1", "c2"]
    assert rows[0]["probe"] == "linear" and rows[1]["probe"] == ""


def test_keeps_patient_id_and_fills_empty_cells(tmp_path):
    _write(tmp_path, "id,image,diagnosis,clip_id,patient_id\na,a.png,covid,c1,p9\nb,b.png,covid,c2,\n")
    assert [r["patient_id"] for r in read_manifest(tmp_path)] == ["p9", "c2"]


def test_excel_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes("\ufeffid,image,diagnosis,clip_id\na,a.png,covid,c1\n".encode())
    assert read_manifest(path)[0]["id"] == "a"


def test_missing_folder_names_path(tmp_path):
    with pytest.raises(ManifestError, match="nope"):
        read_manifest(tmp_path / "nope")


def test_folder_without_manifest_names_file(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest\.csv: the folder has no manifest\.csv"):
        read_manifest(tmp_path)


def test_empty_file(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path}: file is empty")


def test_header_without_rows(tmp_path):
    path = _write(tmp_path, "id,image,diagnosis,clip_id\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(path)
    assert str(err.value).startswith(f"{path}: no rows")


def test_missing_required_column_message(tmp_path):
    path = _write(tmp_path, "id,image,diagnosis\na,a.png,covid\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == (
        f"{path}: missing required column(s) clip_id; a manifest needs {', '.join(REQUIRED_COLUMNS)}"
    )
    assert isinstance(err.value, ValueError)


def test_duplicate_ids(tmp_path):
    path = _write(tmp_path, "id,image,diagnosis,clip_id\na,a.png,covid,c1\nb,b.png,covid,c1\na,c.png,covid,c2\n")
    with pytest.raises(ManifestError, match=r"duplicate id 'a' on lines 2 and 4") as err:
        read_manifest(path)
    assert str(err.value).startswith(str(path))


def test_empty_required_cell(tmp_path):
    _write(tmp_path, "id,image,diagnosis,clip_id\na,a.png,covid,\n")
    with pytest.raises(ManifestError, match="line 2 has empty clip_id"):
        read_manifest(tmp_path)


def test_probe_is_read_as_a_probe(tmp_path):
    _write(
        tmp_path,
        "id,image,diagnosis,clip_id,probe\na,a.png,covid,c1,Convex\nb,b.png,covid,c2,linear\nc,c.png,covid,c3,\n",
    )
    assert [r["probe"] for r in read_manifest(tmp_path)] == [Probe.CURVILINEAR, Probe.LINEAR, ""]
    path = _write(tmp_path, "id,image,diagnosis,clip_id,probe\na,a.png,covid,c1,linear\nb,b.png,covid,c2,phased\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == (
        f"{path}: line 3: unknown probe 'phased'; choose one of: linear, curvilinear (convex is read as curvilinear), "
        "or leave the cell empty"
    )
