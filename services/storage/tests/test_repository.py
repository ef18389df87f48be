"""The image repository on both backends: a folder and a real SeaweedFS bucket."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from cropseg_storage.seeding import seed_samples
from storage_testing import SAMPLES, column_mask, encode, field_image

from cropseg_core.imaging import NotAnImageError, decode_image
from cropseg_core.repository import (
    ImageNotFoundError,
    ImageRepository,
    InvalidCursorError,
    InvalidIdError,
    LabelSizeMismatchError,
    NoLabelError,
    NoSegmentationError,
    SegmentationRecord,
)
from cropseg_core.settings import ImageLimits
from cropseg_core.store import BlobStore
from cropseg_core.store.filesystem import FilesystemStore


@pytest.fixture
def repository(blob_store: BlobStore) -> ImageRepository:
    return ImageRepository(blob_store, ImageLimits())


def segmentation(image_id: str, version: str = "1.0.0", fraction: float = 0.5) -> SegmentationRecord:
    return SegmentationRecord(
        image_id=image_id,
        model_name="cropseg-unet",
        model_version=version,
        threshold=0.55,
        vegetation_fraction=fraction,
        latency_ms=12.0,
        created_at=datetime.now(UTC),
    )


def test_same_bytes_same_id_and_stored_once(repository: ImageRepository) -> None:
    data = encode(field_image())
    first, created = repository.add_image(data, source="upload", filename="../../etc/field.png")
    again, created_again = repository.add_image(data, source="upload", filename="other.png")
    assert (created, created_again) == (True, False)
    assert again == first
    assert first.filename == "field.png"  # only the last path component is kept
    assert (first.width, first.height, first.format, first.size) == (40, 30, "PNG", len(data))
    assert repository.image_bytes(first) == data
    assert repository.count("upload") == 1
    assert repository.stored_bytes() == len(data)


@pytest.mark.slow
def test_concurrent_uploads_of_identical_and_distinct_images(repository: ImageRepository) -> None:
    images = [encode(field_image(seed=n % 5)) for n in range(20)]  # 5 distinct, each 4 times
    results: list[tuple[str, bool]] = []
    barrier = threading.Barrier(len(images))

    def upload(data: bytes) -> None:
        barrier.wait()
        record, created = repository.add_image(data, source="upload")
        results.append((record.id, created))

    threads = [threading.Thread(target=upload, args=(data,)) for data in images]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = {image_id for image_id, _ in results}
    assert len(ids) == 5
    assert sum(created for _, created in results) == 5  # exactly one creator per distinct image
    page, _ = repository.page(limit=100)
    assert sorted(record.id for record in page) == sorted(ids)  # listed once each


def test_pages_are_newest_first_with_a_cursor_and_a_source_filter(repository: ImageRepository) -> None:
    uploads = [repository.add_image(encode(field_image(seed=n)), source="upload")[0] for n in range(5)]
    sample = repository.add_image(encode(field_image(seed=99)), source="sample")[0]
    first, cursor = repository.page(limit=4)
    second, last = repository.page(limit=4, cursor=cursor)
    assert [r.id for r in first + second] == [sample.id] + [u.id for u in reversed(uploads)]
    assert last is None
    only_uploads, _ = repository.page(limit=10, source="upload")
    assert [r.id for r in only_uploads] == [u.id for u in reversed(uploads)]
    with pytest.raises(InvalidCursorError):
        repository.page(limit=2, cursor="../../x")


def test_stale_index_marker_is_skipped(repository: ImageRepository) -> None:
    record = repository.add_image(encode(field_image()), source="upload")[0]
    repository.store.put(f"index/upload/0000000000001-{record.id}", b"")  # a crashed duplicate upload
    page, _ = repository.page(limit=10)
    assert [r.id for r in page] == [record.id]


def test_random_sample(repository: ImageRepository) -> None:
    ids = {repository.add_image(encode(field_image(seed=n)), source="sample")[0].id for n in range(6)}
    chosen = repository.sample(4)
    assert len(chosen) == 4
    assert {r.id for r in chosen} <= ids
    assert repository.sample(4, source="upload") == []


def test_not_an_image_is_refused_before_anything_is_written(repository: ImageRepository) -> None:
    with pytest.raises(NotAnImageError):
        repository.add_image(b"GIF89a not supported", source="upload")
    assert repository.store.list_blobs() == []


def test_label_must_match_the_image_size(repository: ImageRepository) -> None:
    data = encode(field_image())
    with pytest.raises(LabelSizeMismatchError, match="label is 20x30 but the image is 40x30"):
        repository.add_image(data, source="upload", label=encode(column_mask(20, 30, 5)))
    assert repository.store.list_blobs() == []  # checked before the image was stored
    record = repository.add_image(data, source="upload", label=encode(column_mask(40, 30, 30)))[0]
    stored = decode_image(repository.label(record.id)).pixels[..., 0]
    np.testing.assert_array_equal(stored, column_mask(40, 30, 30))


def test_label_of_any_mode_is_stored_as_a_binary_mask(repository: ImageRepository) -> None:
    record = repository.add_image(encode(field_image()), source="upload")[0]
    with pytest.raises(NoLabelError):
        repository.label(record.id)
    colour = np.zeros((30, 40, 3), np.uint8)
    colour[:, :10] = (0, 200, 0)  # green on black, as some annotation tools export
    repository.put_label(record.id, encode(colour))
    assert repository.has_label(record.id)
    np.testing.assert_array_equal(
        decode_image(repository.label(record.id)).pixels[..., 0], column_mask(40, 30, 10)
    )


def test_segmentations_per_model_version_and_prediction_records(repository: ImageRepository) -> None:
    record = repository.add_image(encode(field_image()), source="upload")[0]
    with pytest.raises(NoSegmentationError):
        repository.mask(record.id)
    repository.save_segmentation(segmentation(record.id, "1.0.0", 0.4), encode(column_mask(40, 30, 16)))
    repository.save_segmentation(segmentation(record.id, "1.1.0", 0.5), encode(column_mask(40, 30, 20)))
    newest, png = repository.mask(record.id)
    assert newest.model_version == "1.1.0"
    assert decode_image(png).pixels[0, 19, 0] == 255
    older, _ = repository.mask(record.id, "1.0.0")
    assert older.vegetation_fraction == 0.4
    with pytest.raises(NoSegmentationError, match=r"by model version 9\.9"):
        repository.mask(record.id, "9.9")
    assert [s.model_version for s in repository.segmentations(record.id)] == ["1.1.0", "1.0.0"]
    day = f"{newest.created_at:%Y-%m-%d}"
    assert [r["model_version"] for r in repository.predictions(day)] == ["1.0.0", "1.1.0"]


def test_delete_removes_everything_derived_but_keeps_history(repository: ImageRepository) -> None:
    data = encode(field_image())
    record = repository.add_image(data, source="upload", label=encode(column_mask(40, 30, 5)))[0]
    repository.save_segmentation(segmentation(record.id), encode(column_mask(40, 30, 5)))
    repository.thumbnail(record, 16)
    repository.delete(record.id)
    with pytest.raises(ImageNotFoundError):
        repository.get(record.id)
    remaining = [b.key for b in repository.store.list_blobs()]
    assert all(key.startswith("predictions/") for key in remaining), remaining
    assert repository.add_image(data, source="upload")[1]  # can be uploaded again


def test_thumbnail_is_small_and_cached(repository: ImageRepository) -> None:
    record = repository.add_image(encode(field_image(400, 300)), source="upload")[0]
    thumbnail = repository.thumbnail(record, 64)
    assert decode_image(thumbnail).pixels.shape == (48, 64, 3)
    assert repository.store.exists(f"thumbnails/{record.id[:2]}/{record.id}-rgb.jpg")
    assert repository.thumbnail(record, 64) == thumbnail


def test_pictures_are_made_once_kept_and_go_with_the_image(repository: ImageRepository) -> None:
    """The picture of a layout (rebuilt on every GET before: 1.4 GB for four GETs of 40 MP) is
    made once; ``make=False`` tells a route whether making it (and its memory) is needed."""
    record = repository.add_image(encode(field_image(400, 300)), source="upload", layout="cir")[0]
    assert repository.picture(record, make=False) is None
    picture = repository.picture(record)
    assert decode_image(picture).pixels.shape == (300, 400, 3)
    assert repository.picture(record, make=False) == picture
    repository.delete(record.id)
    assert not list(repository.store.list_blobs("thumbnails/"))


@pytest.mark.parametrize(
    "bad", ["abc", "A" * 64, "../" + "0" * 61, "0" * 63 + "g"], ids=["short", "upper", "path", "nonhex"]
)
def test_malformed_ids_never_reach_the_store(repository: ImageRepository, bad: str) -> None:
    with pytest.raises(InvalidIdError):
        repository.get(bad)


@pytest.mark.slow
def test_samples_are_seeded_once_with_labels(repository: ImageRepository) -> None:
    assert seed_samples(repository, SAMPLES) == 12
    assert seed_samples(repository, SAMPLES) == 0
    samples = repository.sample(50, source="sample")
    assert len(samples) == 12
    assert all(repository.has_label(r.id) for r in samples)


def test_the_out_of_field_share_is_measured_at_upload(repository: ImageRepository) -> None:
    field = field_image(seed=3)
    half = field.copy()
    half[:, : half.shape[1] // 2] = 0  # the left half beyond the orthomosaic's edge
    black = np.zeros_like(field)
    fractions = [
        repository.add_image(encode(pixels), source="upload")[0].black_fraction
        for pixels in (field, half, black)
    ]
    assert fractions == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("write", ["label", "upload-label", "segmentation", "thumbnail", "layout"])
def test_a_delete_during_a_write_leaves_no_orphan(repository: ImageRepository, write: str) -> None:
    """DELETE lands between a writer's check of the image and its write: the write is taken back
    (404) and nothing of it reappears when the same bytes are uploaded again."""
    data = encode(field_image(seed=7))
    record, _ = repository.add_image(data, source="upload")
    store = repository.store
    original_put = store.put
    deleted: list[str] = []

    def race_then_put(key: str, value: bytes) -> None:
        if not deleted:
            deleted.append(key)
            repository.delete(record.id)  # the concurrent DELETE, just before this write lands
        original_put(key, value)

    store.put = race_then_put  # type: ignore[method-assign]
    segmentation = SegmentationRecord(
        image_id=record.id, model_name="cropseg-unet", model_version="1.0.0", threshold=0.5,
        vegetation_fraction=0.5, latency_ms=10, created_at=datetime.now(UTC),
    )  # fmt: skip
    mask = encode(column_mask(40, 30, 10))
    writes = {
        "label": lambda: repository.put_label(record.id, mask),
        "upload-label": lambda: repository.add_image(data, source="upload", label=mask),
        "segmentation": lambda: repository.save_segmentation(segmentation, mask),
        "thumbnail": lambda: repository.thumbnail(record, 64),
        "layout": lambda: repository.set_layout(record.id, "rgb"),
    }
    with pytest.raises(ImageNotFoundError):
        writes[write]()
    store.put = original_put  # type: ignore[method-assign]
    assert deleted
    again, created = repository.add_image(data, source="upload")
    assert created
    assert not repository.has_label(again.id)
    assert repository.segmentations(again.id) == []
    assert [
        key for key in store.list_keys() if record.id in key and not key.startswith(("images/", "index/"))
    ] == []


@pytest.mark.slow
def test_uploads_with_a_label_racing_deletes_leave_no_label(tmp_path: Path) -> None:
    """The same bytes uploaded again with a label while a DELETE removes them, 300 times (the
    DELETE up to 2 ms later: about the upload's decoding): once the image is deleted, uploading
    the bytes without a label finds none; no write fails on the folder the DELETE removes."""
    repository = ImageRepository(FilesystemStore(tmp_path), ImageLimits())
    data, label = encode(field_image(seed=8)), encode(column_mask(40, 30, 10))
    image_id = repository.add_image(data, source="upload")[0].id
    delays = np.random.default_rng(0).uniform(0, 0.002, 300)
    orphans = 0
    with ThreadPoolExecutor(2) as pool:
        for delay in delays:
            start = threading.Barrier(2)
            upload = pool.submit(
                at_once, start, 0, lambda: repository.add_image(data, source="upload", label=label)
            )
            delete = pool.submit(at_once, start, delay, lambda: repository.delete(image_id))
            for done in (upload, delete):
                with contextlib.suppress(ImageNotFoundError):  # deleted first, or while labelled
                    done.result()
            with contextlib.suppress(ImageNotFoundError):  # the upload may have come after the DELETE
                repository.delete(image_id)
            again, created = repository.add_image(data, source="upload")
            assert created
            orphans += repository.has_label(again.id)
    assert orphans == 0


def at_once(start: threading.Barrier, delay_s: float, call: Callable[[], object]) -> object:
    """``call()``'s result, ``delay_s`` after the other party of ``start`` is ready too."""
    start.wait()
    time.sleep(delay_s)
    return call()


def test_the_overlay_is_made_once_and_replaced_with_its_mask(repository: ImageRepository) -> None:
    record, _ = repository.add_image(encode(field_image(seed=8)), source="upload")

    def segment(columns: int) -> None:
        segmentation = SegmentationRecord(
            image_id=record.id, model_name="cropseg-unet", model_version="1.0.0", threshold=0.5,
            vegetation_fraction=columns / 40, latency_ms=10, created_at=datetime.now(UTC),
        )  # fmt: skip
        repository.save_segmentation(segmentation, encode(column_mask(40, 30, columns)))

    segment(10)
    _, first = repository.overlay(record.id)
    cached = f"masks/{record.id}/1.0.0.overlay-rgb-ff00ff.png"  # layout and tint colour
    assert repository.store.get(cached) == first  # kept beside the mask: the next GET decodes nothing
    assert repository.overlay(record.id)[1] == first
    segment(30)  # a new mask of the same model version: the old overlay goes with it
    assert not repository.store.exists(cached)
    assert repository.overlay(record.id)[1] != first
    assert [s.model_version for s in repository.segmentations(record.id)] == ["1.0.0"]
