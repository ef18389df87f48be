"""A season over S3: 4 workers against a real SeaweedFS, killed halfway and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cropseg_batch import batch
from cropseg_batch.batch import BatchError, Options, open_location, run_shard
from cropseg_batch.cli import main
from cropseg_batch.fields import field_block, write_field

from cropseg_core.masks import encode_png
from cropseg_core.model import LoadedModel
from cropseg_core.processes import free_port
from cropseg_core.store import BlobStore, S3Settings
from cropseg_core.store.s3 import S3Store

REPO = Path(__file__).resolve().parents[3]
MODEL = REPO / "model/artifacts/cropseg-unet.onnx"
IMAGES = 200


def season(store: BlobStore, folder: Path) -> int:
    """200 field photos, 2 orthomosaics, a copy of one photo and a truncated one; returns how many."""
    for index in range(IMAGES):
        pixels = field_block(600 + 7 * index, 600 + 3 * index, 96, 128, 2048, seed=index)[..., :3]
        store.put(f"in/day-{index // 50}/photo-{index:03d}.png", encode_png(pixels, compress_level=1))
    for index in range(2):
        store.upload(f"in/ortho-{index}.tif", write_field(folder / f"ortho-{index}.tif", 700, seed=index))
    store.put("in/copy-of-photo-007.png", store.get("in/day-0/photo-007.png"))
    store.put("in/truncated.png", store.get("in/day-0/photo-001.png")[:400])
    store.put("in/notes.txt", b"not an input: skipped by the manifest")
    return IMAGES + 4


def command(settings: S3Settings, output: str, workers: int) -> list[str]:
    location = f"s3://{settings.bucket}/{settings.prefix}"
    return [sys.executable, "-m", "cropseg_batch", "batch", f"{location}in", "--output",
            f"{location}{output}", "--endpoint-url", str(settings.endpoint_url), "--workers", str(workers),
            "--model", str(MODEL)]  # fmt: skip


def environment(settings: S3Settings) -> dict[str, str]:
    assert settings.access_key_id is not None
    assert settings.secret_access_key is not None
    return {**os.environ, "AWS_ACCESS_KEY_ID": settings.access_key_id.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": settings.secret_access_key.get_secret_value()}  # fmt: skip


def outputs(store: BlobStore, prefix: str) -> dict[str, bytes]:
    return {key.removeprefix(prefix): store.get(key) for key in store.list_keys(f"{prefix}outputs/")}


@pytest.mark.slow
def test_a_batch_killed_halfway_resumes_to_exactly_the_outputs_of_an_uninterrupted_run(
    s3_settings: S3Settings, tmp_path: Path
) -> None:
    store = S3Store(s3_settings)
    inputs = season(store, tmp_path)
    env = environment(s3_settings)
    subprocess.run(command(s3_settings, "whole", 4), env=env, check=True, capture_output=True, timeout=600)

    interrupted = subprocess.Popen(
        command(s3_settings, "resumed", 4), env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while len(store.list_keys("resumed/files/")) < inputs // 2:
        assert interrupted.poll() is None, "the batch finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(interrupted.pid, signal.SIGKILL)  # the coordinator and its four workers, mid-file
    interrupted.wait()
    assert not store.exists("resumed/summary.json")
    records = {key: store.get(key) for key in store.list_keys("resumed/files/")}
    done_before = {key: record for key, record in records.items() if b'"status":"ok"' in record}

    rerun = subprocess.run(
        command(s3_settings, "resumed", 4), env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{inputs} inputs: {inputs - 1} ok, 1 failed" in rerun.stdout
    assert "failed: truncated.png: the PNG image is truncated" in rerun.stdout

    assert outputs(store, "resumed/") == outputs(store, "whole/")  # every output once, byte for byte
    summary = store.get_json("resumed/summary.json")
    assert (summary["inputs"], summary["ok"], summary["failed"], summary["pending"]) == (
        inputs,
        inputs - 1,
        1,
        0,
    )
    rows = {row["key"]: row for row in summary["files"]}
    assert rows["copy-of-photo-007.png"]["sha256"] == rows["day-0/photo-007.png"]["sha256"]
    assert sum(row.get("reused", False) for row in rows.values()) >= 1  # the copy was not computed again
    assert rows["ortho-0.tif"]["outputs"].keys() == {
        "mask.tif", "preview.png", "cover.csv", "cover.geojson", "cover.gpkg", "cell-counts.tif",
    }  # fmt: skip
    assert "notes.txt" not in rows
    assert {key: store.get(key) for key in done_before} == done_before  # finished before the kill: not redone
    assert store.get("resumed/summary.csv").decode().count("\n") == inputs + 1


@pytest.mark.slow
def test_an_unreachable_bucket_is_retried_then_fails_saying_how_to_resume(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(batch, "FIRST_WAIT_S", 0.01)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens
    source, output = open_location("s3://season/in", endpoint), open_location("s3://season/out", endpoint)
    with pytest.raises(
        BatchError, match=r"reading the manifest failed 5 times .* run the same command again"
    ):
        run_shard(source, output, LoadedModel.load(MODEL), Options(), 0, 1)
    code = main(["batch", "s3://season/in", "--output", "s3://season/out", "--endpoint-url", endpoint,
                 "--shard", "0/1", "--model", str(MODEL)])  # fmt: skip
    assert code == 1
    assert "cropseg: error: reading the manifest failed 5 times" in capsys.readouterr().err


@pytest.mark.slow
def test_a_folder_batch_and_its_command_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = open_location(str(tmp_path / "in"))
    season_of_two = [field_block(700, 700 + 50 * i, 64, 64, 2048, seed=i)[..., :3] for i in range(2)]
    for index, pixels in enumerate(season_of_two):
        source.put(f"photo-{index}.png", encode_png(pixels))
    (tmp_path / "in/photo 2.png").write_bytes(encode_png(season_of_two[0]))  # a key S3 allows, cropseg not
    command = ["batch", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", str(MODEL)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "3 inputs: 2 ok, 1 failed" in printed
    assert "failed: photo 2.png: the key 'photo 2.png' has characters cropseg does not read" in printed
    assert (tmp_path / "out/summary.csv").is_file()
    with pytest.raises(SystemExit):
        main(["batch", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--shard", "4/4"])
    assert "0 <= INDEX < COUNT" in capsys.readouterr().err
    assert main(["batch", "s3:///nobucket", "--output", str(tmp_path / "out"), "--model", str(MODEL)]) == 1
    assert "names no bucket" in capsys.readouterr().err
