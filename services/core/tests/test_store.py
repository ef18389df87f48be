"""One test suite for both storage backends: a folder and a real SeaweedFS S3 server."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from cropseg_core.store import (
    BlobNotFoundError,
    BlobStore,
    InvalidKeyError,
    S3Settings,
    StoreError,
    StoreSettings,
    open_store,
)
from cropseg_core.store.filesystem import STALE_TEMP_AGE_S, FilesystemStore


@pytest.fixture
def store(blob_store: BlobStore) -> BlobStore:
    return blob_store


@pytest.mark.slow
def test_put_get_overwrite_and_missing(store: BlobStore) -> None:
    store.put("images/ab/one.png", b"first")
    assert store.get("images/ab/one.png") == b"first"
    store.put("images/ab/one.png", b"second")
    assert store.get("images/ab/one.png") == b"second"
    assert store.exists("images/ab/one.png")
    assert not store.exists("images/ab/two.png")
    with pytest.raises(BlobNotFoundError, match=r"images/ab/two\.png not found"):
        store.get("images/ab/two.png")


def test_large_values_are_read_in_chunks_and_a_missing_one_fails_before_any(store: BlobStore) -> None:
    data = os.urandom(300_000)
    store.put("fields/x/result/mask.tif", data)
    size, chunks = store.read_chunks("fields/x/result/mask.tif", chunk_size=128 * 1024)
    parts = list(chunks)
    assert size == len(data)
    assert b"".join(parts) == data
    assert max(len(part) for part in parts) <= 128 * 1024
    assert len(parts) >= 3
    with pytest.raises(BlobNotFoundError, match="not found"):
        store.read_chunks("fields/x/result/none.tif")
    local = store.local_path("fields/x/result/mask.tif")
    assert local is None or local.read_bytes() == data
    assert store.local_path("fields/x/result/none.tif") is None


def test_put_if_absent_creates_once(store: BlobStore) -> None:
    assert store.put_if_absent("meta/x.json", b"winner")
    assert not store.put_if_absent("meta/x.json", b"loser")
    assert store.get("meta/x.json") == b"winner"


@pytest.mark.slow
def test_put_if_absent_has_exactly_one_winner_under_concurrency(store: BlobStore) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(12)

    def contend(number: int) -> None:
        barrier.wait()
        results.append(store.put_if_absent("race/key.json", f"writer {number}".encode()))

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 11 + [True]
    assert store.get("race/key.json").startswith(b"writer ")


def test_delete_reports_whether_the_key_existed(store: BlobStore) -> None:
    store.put("a/b/c.txt", b"x")
    assert store.delete("a/b/c.txt")
    assert not store.delete("a/b/c.txt")
    assert not store.exists("a/b/c.txt")
    assert store.list_blobs("a/") == []


def test_list_is_sorted_prefixed_and_paginated(store: BlobStore) -> None:
    for key in ("index/upload/3", "index/upload/1", "index/sample/2", "index/uploads-not/9", "other/1"):
        store.put(key, key.encode())
    assert [b.key for b in store.list_blobs("index/upload/")] == ["index/upload/1", "index/upload/3"]
    assert [b.key for b in store.list_blobs("index/up")] == [
        "index/upload/1",
        "index/upload/3",
        "index/uploads-not/9",
    ]
    assert [b.key for b in store.list_blobs("index/", start_after="index/sample/2", limit=1)] == [
        "index/upload/1"
    ]
    assert [(b.key, b.size) for b in store.list_blobs("other/")] == [("other/1", 7)]
    assert store.list_blobs("missing/") == []
    cases = [("index/up", None, None), ("index/", "index/sample/2", 2), ("", None, 3)]
    for prefix, start_after, limit in cases:
        assert store.list_keys(prefix, start_after=start_after, limit=limit) == [
            b.key for b in store.list_blobs(prefix, start_after=start_after, limit=limit)
        ]
    assert store.delete_prefix("index/") == 4
    assert [b.key for b in store.list_blobs()] == ["other/1"]


def test_records_append_in_order_and_streams_are_listed(store: BlobStore) -> None:
    assert store.read_records("predictions/2026-11-27") == []
    for number in range(3):
        store.append_record("predictions/2026-11-27", {"n": number, "text": "ünïcode"})
    store.append_record("predictions/2026-11-28", {"n": 9})
    assert store.read_records("predictions/2026-11-27") == [
        {"n": 0, "text": "ünïcode"},
        {"n": 1, "text": "ünïcode"},
        {"n": 2, "text": "ünïcode"},
    ]
    assert store.streams("predictions/") == ["predictions/2026-11-27", "predictions/2026-11-28"]


@pytest.mark.slow
def test_concurrent_appends_lose_no_record(store: BlobStore) -> None:
    def append(writer: int) -> None:
        for number in range(10):
            store.append_record("log/stream", {"writer": writer, "n": number})

    threads = [threading.Thread(target=append, args=(w,)) for w in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = store.read_records("log/stream")
    assert sorted((r["writer"], r["n"]) for r in records) == [(w, n) for w in range(5) for n in range(10)]


@pytest.mark.parametrize(
    "key",
    ["", "../etc/passwd", "/abs", "a//b", "a/../b", ".hidden", "a/.probe", "a/b/", "sp ace", "a\\b"],
    ids=["empty", "parent", "absolute", "double-slash", "dotdot", "hidden", "hidden-part", "trailing",
         "space", "backslash"],
)  # fmt: skip
def test_unsafe_keys_are_refused(store: BlobStore, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.get(key)


def test_writable_probe_leaves_nothing_behind(store: BlobStore) -> None:
    store.check_writable()
    assert store.list_blobs() == []


def test_usage_and_description(store: BlobStore) -> None:
    usage = store.usage()
    if isinstance(store, FilesystemStore):
        assert usage is not None
        assert 0 < usage.free_bytes <= usage.total_bytes
        assert store.describe().startswith("filesystem ")
    else:
        assert usage is None
        assert "bucket cropseg prefix test-" in store.describe()
        assert "test" not in store.describe().split("prefix")[0]  # no credentials


# Filesystem specifics: crash safety on the volume.


def test_temp_files_are_invisible_and_stale_ones_swept(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    store.put("images/ab/x.png", b"whole")
    fresh = tmp_path / "images" / "ab" / ".x.png.fresh.tmp"
    stale = tmp_path / "images" / "ab" / ".y.png.stale.tmp"
    fresh.write_bytes(b"half")
    stale.write_bytes(b"half")
    old = time.time() - STALE_TEMP_AGE_S - 60
    os.utime(stale, (old, old))
    assert [b.key for b in store.list_blobs()] == ["images/ab/x.png"]
    assert FilesystemStore(tmp_path).sweep_temporary() == 0  # the constructor already swept it
    assert not stale.exists()
    assert fresh.exists()  # may belong to a live writer


def test_torn_last_record_is_skipped(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    store.append_record("predictions/day", {"n": 1})
    with (tmp_path / "predictions" / "day.jsonl").open("ab") as handle:
        handle.write(b'{"n": 2, "trunc')
    assert store.read_records("predictions/day") == [{"n": 1}]


@pytest.mark.parametrize("moment", ["making-the-folder", "creating-the-temp-file", "after-the-rename"])
def test_a_write_survives_a_delete_removing_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """A delete removes the folder it leaves empty. A write into that folder at the same moment
    makes the folder again -- or, once its file is in, finds nothing left to sync -- instead of
    failing (a 500 in the service)."""
    store = FilesystemStore(tmp_path)
    store.put("labels/other.png", b"other")
    folder = tmp_path / "labels"
    raced: list[str] = []

    def concurrent_delete(key: str) -> None:
        if not raced:
            raced.append(key)
            assert store.delete(key)
            assert not folder.exists()

    real_mkdir, real_mkstemp, real_replace = os.mkdir, tempfile.mkstemp, os.replace

    def mkdir(path: Path, mode: int = 0o777) -> None:
        try:
            real_mkdir(path, mode)
        except FileExistsError:  # seen there, then removed before pathlib checks it is a folder
            if Path(path) == folder:
                concurrent_delete("labels/other.png")
            raise

    def mkstemp(**kwargs: str) -> tuple[int, str]:
        concurrent_delete("labels/other.png")
        return real_mkstemp(**kwargs)

    def replace(source: str, target: Path) -> None:
        real_replace(source, target)
        store.delete("labels/other.png")
        concurrent_delete("labels/mine.png")  # the new file deleted at once, and its folder

    patches = {
        "making-the-folder": (os, "mkdir", mkdir),
        "creating-the-temp-file": (tempfile, "mkstemp", mkstemp),
        "after-the-rename": (os, "replace", replace),
    }
    monkeypatch.setattr(*patches[moment])
    store.put("labels/mine.png", b"mine")
    monkeypatch.undo()
    assert raced
    assert store.list_keys() == ([] if moment == "after-the-rename" else ["labels/mine.png"])


def test_unusable_folder_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"not a folder")
    with pytest.raises(StoreError, match="cannot create the data folder"):
        FilesystemStore(tmp_path / "file" / "data")


# S3 specifics.


def test_s3_creates_its_bucket_when_asked(seaweedfs: S3Settings) -> None:
    settings = seaweedfs.model_copy(update={"bucket": "fresh-bucket", "create_bucket": True})
    store = open_store(StoreSettings(backend="s3", s3=settings))
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_s3_unreachable_endpoint_is_a_store_error() -> None:
    settings = S3Settings(
        endpoint_url="http://127.0.0.1:9", access_key_id="a", secret_access_key="b", timeout_s=1
    )
    store = open_store(StoreSettings(backend="s3", s3=settings))
    with pytest.raises(StoreError, match="cannot read k"):
        store.get("k")
    with pytest.raises(StoreError, match="not writable"):
        store.check_writable()
