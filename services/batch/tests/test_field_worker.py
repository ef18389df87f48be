"""The field worker: fields of a real store segmented in the background, resumable, cancellable,
clear about bad input, with the results a web map needs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from cropseg_batch.cli import main
from cropseg_batch.cover import CoverOptions
from cropseg_batch.field_worker import FieldWorker
from cropseg_batch.fields import write_field
from cropseg_batch.raster import CancelledError, segment_raster
from PIL import Image
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from cropseg_core.fields import (
    RESULTS,
    CoverRequest,
    FieldCatalogue,
    FieldJob,
    FieldRecord,
    job_key,
    result_key,
)
from cropseg_core.model import LoadedModel
from cropseg_core.store.filesystem import FilesystemStore

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "model/artifacts/cropseg-unet.onnx"
SIDE = 2048
WINDOWS = (SIDE // 512) ** 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    return LoadedModel.load(MODEL)


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_field(tmp_path_factory.mktemp("field") / "field.tif", SIDE)


@pytest.fixture
def store(tmp_path: Path) -> FilesystemStore:
    return FilesystemStore(tmp_path / "store")


def add_field(store: FilesystemStore, source: Path, layout: str = "rgb") -> str:
    """Store ``source`` as a field, as storage's upload does, and queue its segmentation."""
    field_id = uuid.uuid4().hex
    with rasterio.open(source) as dataset:
        record = FieldRecord(
            id=field_id, name=source.stem, filename=source.name, size=source.stat().st_size,
            width=dataset.width, height=dataset.height, bands=dataset.count, alpha=dataset.count == 4,
            layout=layout, crs="EPSG:32632", pixel_size=(0.02, 0.02), bounds=tuple(dataset.bounds),
            created=datetime.now(UTC),
        )  # fmt: skip
    FieldCatalogue(store).add(record, source)
    queue(store, field_id)
    return field_id


def queue(store: FilesystemStore, field_id: str, cover: CoverRequest | None = None) -> None:
    job = FieldJob(
        status="queued", cover=cover or CoverRequest(), requested=datetime.now(UTC), backend="local"
    )
    FieldCatalogue(store).put_job(field_id, job)


def job_of(store: FilesystemStore, field_id: str) -> FieldJob:
    job = FieldCatalogue(store).job(field_id)
    assert job is not None
    return job


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read(1)


def stop_after(windows: int, seen: list[int]) -> Callable[[int, int], None]:
    def on_window(done: int, total: int) -> None:
        seen.append(done)
        if done == windows:
            raise CancelledError

    return on_window


def test_a_resumed_run_writes_what_an_uninterrupted_one_writes(
    model: LoadedModel, field: Path, tmp_path: Path
) -> None:
    (tmp_path / "whole").mkdir()
    (tmp_path / "resumed").mkdir()
    whole = segment_raster(field, tmp_path / "whole" / "mask.tif", model, window=512)
    checkpoint, seen = tmp_path / "checkpoint", []
    with pytest.raises(CancelledError):
        segment_raster(
            field, tmp_path / "resumed" / "mask.tif", model, window=512, checkpoint=checkpoint,
            on_window=stop_after(5, seen),
        )  # fmt: skip
    assert seen == [0, 1, 2, 3, 4, 5]
    assert {path.name for path in checkpoint.iterdir()} == {"mask.tif", "state.npz"}
    assert not (tmp_path / "resumed" / "mask.tif").exists()
    seen.clear()
    resumed = segment_raster(
        field, tmp_path / "resumed" / "mask.tif", model, window=512, checkpoint=checkpoint,
        on_window=lambda done, total: seen.append(done),
    )  # fmt: skip
    assert seen == list(range(5, WINDOWS + 1))
    assert np.array_equal(pixels(tmp_path / "resumed" / "mask.tif"), pixels(tmp_path / "whole" / "mask.tif"))
    for name in ("mask.cover.csv", "mask.preview.png", "mask.cover.geojson"):
        assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert resumed.vegetation_fraction == whole.vegetation_fraction
    assert resumed.cover == whole.cover
    assert not any(checkpoint.iterdir())  # spent: removed


def test_a_checkpoint_of_another_raster_or_settings_is_ignored(model: LoadedModel, tmp_path: Path) -> None:
    first = write_field(tmp_path / "first.tif", 1024, seed=1)
    other = write_field(tmp_path / "other.tif", 1024, seed=2)
    checkpoint, seen = tmp_path / "checkpoint", []
    with pytest.raises(CancelledError):
        segment_raster(first, tmp_path / "a.tif", model, window=512, checkpoint=checkpoint,
                       on_window=stop_after(3, seen))  # fmt: skip
    seen.clear()
    segment_raster(other, tmp_path / "b.tif", model, window=512, checkpoint=checkpoint,
                   on_window=lambda done, total: seen.append(done))  # fmt: skip
    assert seen[0] == 0  # started over
    segment_raster(other, tmp_path / "c.tif", model, window=512)
    assert np.array_equal(pixels(tmp_path / "b.tif"), pixels(tmp_path / "c.tif"))

    with pytest.raises(CancelledError):
        segment_raster(first, tmp_path / "a.tif", model, window=512, checkpoint=checkpoint,
                       on_window=stop_after(3, seen))  # fmt: skip
    seen.clear()
    segment_raster(
        first, tmp_path / "a.tif", model, window=512, checkpoint=checkpoint, cover=CoverOptions(cell_m=1.5),
        on_window=lambda done, total: seen.append(done),
    )  # fmt: skip
    assert seen[0] == 0  # counted in cells of 1.5 m, not 1 m: the checkpoint's counts do not fit


def test_segment_raster_resumes_from_its_resume_dir(
    model: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = write_field(tmp_path / "small.tif", 1024)
    with pytest.raises(CancelledError):
        segment_raster(small, tmp_path / "a.tif", model, window=512, checkpoint=tmp_path / "resume",
                       on_window=stop_after(2, []))  # fmt: skip
    resume = ["--window", "512", "--resume-dir", str(tmp_path / "resume")]
    assert (
        main(["segment-raster", str(small), str(tmp_path / "mask.tif"), "--model", str(MODEL), *resume]) == 0
    )
    assert " 2/4 " in capsys.readouterr().err  # the progress bar starts at the checkpoint
    assert not any((tmp_path / "resume").iterdir())
    segment_raster(small, tmp_path / "whole.tif", model, window=512)
    assert np.array_equal(pixels(tmp_path / "whole.tif"), pixels(tmp_path / "mask.tif"))


def run_in_thread(worker: FieldWorker, field_id: str) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(worker.run(field_id)))
    thread.start()
    return thread, outcome


def test_a_cancel_stops_between_windows_and_asking_again_resumes(
    model: LoadedModel, field: Path, store: FilesystemStore, tmp_path: Path
) -> None:
    field_id = add_field(store, field)
    worker = FieldWorker(store, model, tmp_path / "work", window=512, report_every_s=0)
    thread, outcome = run_in_thread(worker, field_id)
    wait_for(lambda: job_of(store, field_id).windows_done >= 3)
    running = job_of(store, field_id)
    assert running.status == "segmenting"
    assert running.windows_total == WINDOWS
    assert (running.megapixels_per_s or 0) > 0
    assert running.seconds_left is not None
    FieldCatalogue(store).ask_cancel(field_id)
    thread.join(60)
    cancelled = job_of(store, field_id)
    assert outcome == ["cancelled"]
    assert cancelled.status == "cancelled"
    assert 3 <= cancelled.windows_done < WINDOWS
    assert cancelled.finished is not None
    assert not FieldCatalogue(store).cancel_asked(field_id)  # carried out
    assert (tmp_path / "work" / field_id / "checkpoint" / "state.npz").is_file()
    assert not store.exists(result_key(field_id, "mask.tif"))

    queue(store, field_id)
    assert worker.run(field_id) == "done"
    done = job_of(store, field_id)
    assert done.status == "done"
    assert done.resumed_from >= 3
    assert done.windows_done == WINDOWS
    assert all(store.exists(result_key(field_id, name)) for name in RESULTS)
    assert not (tmp_path / "work" / field_id).exists()


def test_a_field_deleted_while_it_is_segmented_is_dropped(
    model: LoadedModel, field: Path, store: FilesystemStore, tmp_path: Path
) -> None:
    field_id = add_field(store, field)
    worker = FieldWorker(store, model, tmp_path / "work", window=512, report_every_s=0)
    thread, outcome = run_in_thread(worker, field_id)
    wait_for(lambda: job_of(store, field_id).windows_done >= 2)
    FieldCatalogue(store).delete(field_id)
    thread.join(60)
    assert outcome == [None]
    assert store.list_keys(f"fields/{field_id}/") == []
    assert not (tmp_path / "work" / field_id).exists()


def five_bands(path: Path) -> Path:
    profile = {"driver": "GTiff", "width": 300, "height": 300, "count": 5, "dtype": "uint8",
               "crs": "EPSG:32632", "transform": from_origin(500_000, 5_300_000, 0.02, 0.02)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as out:
        out.write(np.random.default_rng(0).integers(0, 200, (5, 300, 300)).astype("uint8"))
    return path


def test_bad_input_fails_with_a_reason_and_the_worker_goes_on(
    model: LoadedModel, store: FilesystemStore, tmp_path: Path
) -> None:
    bands = add_field(store, five_bands(tmp_path / "five.tif"))
    cells = add_field(store, write_field(tmp_path / "small.tif", 300))
    queue(store, cells, CoverRequest(cell_m=0.01))
    worker = FieldWorker(store, model, tmp_path / "work")
    thread = threading.Thread(target=worker.poll, args=(0.1,))
    thread.start()
    try:
        wait_for(lambda: all(job_of(store, field_id).status == "failed" for field_id in (bands, cells)))
    finally:
        worker.stopping.set()
        thread.join(60)
    assert "layout 'rgb'" in str(job_of(store, bands).error)
    assert "5 band(s)" in str(job_of(store, bands).error)
    assert "smaller than a pixel" in str(job_of(store, cells).error)
    assert job_of(store, cells).finished is not None


@contextlib.contextmanager
def running(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker process with its log in ``log``, killed if the test fails before it ends."""
    with log.open("wb") as sink, subprocess.Popen(command, stderr=sink) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()


def worker_command(store: FilesystemStore, work: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cropseg_batch", "field-worker", "--store", str(store.root), "--work",
            str(work), "--model", str(MODEL), "--poll-s", "0.2", *extra]  # fmt: skip


def test_one_field_as_a_kubernetes_job_runs_and_a_new_cover_only_regrids(
    model: LoadedModel, field: Path, store: FilesystemStore, tmp_path: Path
) -> None:
    field_id = add_field(store, field)
    result = subprocess.run(
        worker_command(store, tmp_path / "work", "--field", field_id, "--window", "1024"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    job = job_of(store, field_id)
    assert (job.status, job.windows_done, job.windows_total, job.percent) == ("done", WINDOWS, WINDOWS, 100.0)
    assert all(store.exists(result_key(field_id, name)) for name in RESULTS)
    report = store.get_json(result_key(field_id, "report.json"))
    with rasterio.open(field) as source:
        west, south, east, north = transform_bounds(source.crs, "EPSG:4326", *source.bounds)
        in_field = int(np.count_nonzero(source.read(4)))
    map_west, map_south, map_east, map_north = report["map_bounds"]
    slack = 1e-5  # a pixel of map.png: about 0.6 m
    assert west - slack <= map_west < map_east <= east + slack
    assert south - slack <= map_south < map_north <= north + slack
    assert map_east - map_west == pytest.approx(east - west, rel=0.01)
    assert report["area_m2"] == pytest.approx(in_field * 0.02**2, abs=0.01)
    assert report["cover"]["cell_m"] == 10
    assert report["source"] == f"fields/{field_id}/source.tif"
    with Image.open(store.local_path(result_key(field_id, "map.png"))) as picture:
        assert picture.mode == "RGBA"
        alpha = np.asarray(picture)[..., 3]
    assert alpha[0, 0] == 0  # a corner of the ellipse: no data, transparent
    assert alpha[alpha.shape[0] // 2, alpha.shape[1] // 2] == 255
    assert 0.6 < np.count_nonzero(alpha) / alpha.size < 0.75  # the ellipse fills pi/4 of its box
    mask = store.local_path(result_key(field_id, "mask.tif"))
    assert mask is not None
    mask_written = mask.stat().st_mtime_ns

    queue(store, field_id, CoverRequest(cell_m=20, zones=4, zone_method="quantile"))
    started = time.monotonic()
    assert FieldWorker(store, model, tmp_path / "work").run(field_id) == "done"
    assert time.monotonic() - started < 5  # no segmentation
    regridded = store.get_json(result_key(field_id, "report.json"))
    assert (regridded["cover"]["cell_m"], regridded["cover"]["zones_asked"]) == (20, 4)
    assert regridded["map_bounds"] == report["map_bounds"]
    assert regridded["cover"]["cells"] < report["cover"]["cells"]
    lines = store.get(result_key(field_id, "cover.csv")).decode().splitlines()
    assert len(lines) - 1 == regridded["cover"]["cells"]
    assert mask.stat().st_mtime_ns == mask_written

    assert (
        subprocess.run(worker_command(store, tmp_path / "work", "--field", field_id), timeout=60).returncode
        == 0
    )
    assert job_of(store, field_id).status == "done"  # nothing to do


def test_sigterm_queues_the_job_again_and_the_next_worker_resumes(
    field: Path, store: FilesystemStore, tmp_path: Path
) -> None:
    field_id = add_field(store, field)
    command = worker_command(store, tmp_path / "work", "--window", "512", "--checkpoint-s", "60")
    with running(command, tmp_path / "first.log") as first:
        wait_for(lambda: store.exists(job_key(field_id)) and job_of(store, field_id).windows_done >= 3)
        first.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0, (tmp_path / "first.log").read_text()
    stopped = job_of(store, field_id)
    assert (stopped.status, stopped.started, stopped.finished) == ("queued", None, None)
    assert 3 <= stopped.windows_done < WINDOWS
    assert FieldCatalogue(store).queued() == [field_id]
    assert "back in the queue" in (tmp_path / "first.log").read_text()

    with running(command, tmp_path / "second.log") as second:
        wait_for(lambda: job_of(store, field_id).status == "done", timeout_s=90)
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
    done = job_of(store, field_id)
    assert done.resumed_from >= stopped.windows_done
    assert all(store.exists(result_key(field_id, name)) for name in RESULTS)
    assert json.loads(store.get(result_key(field_id, "report.json")))["resumed_from"] == done.resumed_from
    assert not os.path.exists(tmp_path / "work" / field_id)
