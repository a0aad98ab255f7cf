"""``Storage.fs``: the storage API as an fsspec filesystem, on the local backend."""

from __future__ import annotations

import pytest

import pywren_core as pw


@pytest.fixture
def fs(tmp_path):
    return pw.storage({"backend": "local"}).fs


def test_write_read_list_and_delete(fs, tmp_path) -> None:
    root = f"file://{tmp_path}/data"
    with fs.open(f"{root}/logs/a.txt", "wb") as f:
        f.write(b"first line\n")
        f.write(b"second line\n")
    fs.pipe_file(f"{root}/logs/deep/b.bin", bytes(range(256)))
    assert fs.cat_file(f"{root}/logs/a.txt") == b"first line\nsecond line\n"
    assert fs.cat_file(f"{root}/logs/deep/b.bin", start=10, end=13) == bytes([10, 11, 12])
    assert fs.cat_file(f"{root}/logs/deep/b.bin", start=-2) == bytes([254, 255])
    with fs.open(f"{root}/logs/a.txt", "rb", block_size=4) as f:
        assert f.readline() == b"first line\n" and f.read() == b"second line\n"
    listing = fs.ls(f"{root}/logs")
    assert {(e["name"].rsplit("/", 1)[1], e["type"], e["size"]) for e in listing} == {
        ("a.txt", "file", 23),
        ("deep", "directory", 0),
    }
    assert fs.info(f"{root}/logs/deep")["type"] == "directory"
    assert fs.isfile(f"{root}/logs/a.txt") and fs.exists(f"{root}/logs/deep/b.bin")
    fs.rm(f"{root}/logs/a.txt")
    assert not fs.exists(f"{root}/logs/a.txt")


def test_missing_paths_raise_file_not_found(fs, tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        fs.cat_file(f"{tmp_path}/nothing")
    with pytest.raises(FileNotFoundError):
        fs.ls(f"{tmp_path}/nothing")
    with pytest.raises(FileNotFoundError):
        fs.open(f"{tmp_path}/nothing", "rb")
