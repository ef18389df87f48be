"""Network, training and export: need the training extra (torch, onnx).

In CI these must run: a missing torch is a failure there, not a skip."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cropseg_core.segmenter import OnnxSegmenter
from cropseg_model.card import write_card
from cropseg_model.cli import main
from cropseg_model.datasets import DatasetError
from cropseg_model.evaluate import markdown_table
from cropseg_model.export import PARITY_ATOL, check_parity, export_onnx
from cropseg_model.train import (
    CropSampler,
    TrainConfig,
    load_checkpoint,
    load_pairs,
    segmentation_loss,
    split_pairs,
    train,
)
from cropseg_model.unet import UNet, input_features

pytestmark = pytest.mark.train


@pytest.mark.parametrize("size", [(1, 1), (7, 9), (33, 47), (64, 64), (360, 480)], ids=str)
def test_output_has_exactly_the_input_size(size: tuple[int, int]) -> None:
    net = UNet().eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, *size))
    assert out.shape == (2, 1, *size)


def test_masks_are_aligned_not_shifted() -> None:
    """Translating the input by a few pixels translates the output by exactly as much."""
    torch.manual_seed(0)
    net = UNet().eval()
    image = torch.rand(1, 3, 64, 64)
    shifted = torch.roll(image, shifts=(8, 8), dims=(2, 3))
    with torch.no_grad():
        a = net(image)[..., 16:40, 16:40]
        b = net(shifted)[..., 24:48, 24:48]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_standardised_features_ignore_exposure_and_black_regions() -> None:
    image = torch.rand(1, 3, 20, 20) * 0.5 + 0.1
    brighter = image * 1.6
    features, features_bright = input_features(image), input_features(brighter)
    # standardised channels (0-2) and chromaticity (3-5) do not change with exposure
    torch.testing.assert_close(features[:, :6], features_bright[:, :6], atol=1e-2, rtol=1e-2)
    padded = torch.zeros(1, 3, 20, 40)
    padded[..., :20] = image
    torch.testing.assert_close(input_features(padded)[:, :6, :, :20], features[:, :6], atol=1e-3, rtol=1e-3)


def test_loss_ignores_pixels_marked_128() -> None:
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    weight = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    segmentation_loss(logits, target, weight).backward()
    assert logits.grad is not None
    assert logits.grad[0, 0, 1].abs().sum() == 0
    assert logits.grad[0, 0, 0].abs().sum() > 0


def test_sampler_keeps_masks_exact_and_black_black(tiny_dataset: Path) -> None:
    sampler = CropSampler(load_pairs(tiny_dataset), TrainConfig(crop=48, batch_size=4))
    images, target, weight = sampler.batch()
    assert images.shape == (4, 3, 48, 48)
    assert target.shape == (4, 1, 48, 48)
    assert set(torch.unique(target).tolist()) <= {0.0, 1.0}
    assert weight.min() == 1.0  # generated masks have no ignore pixels
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0


@pytest.mark.slow
def test_tiny_training_run_reduces_the_loss_and_exports_with_parity(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        steps=40, batch_size=4, crop=64, lr=5e-3, val_every=20, channels=(8, 16), bottleneck=16
    )
    report = train(tiny_dataset, tiny_dataset, tmp_path / "tiny.pt", config, progress=False)
    history = report["history"]
    assert isinstance(history, list)
    assert len(history) == 2
    first, last = history
    assert last["loss"] < first["loss"] * 0.9, history
    net, payload = load_checkpoint(tmp_path / "tiny.pt")
    assert payload["step"] in (20, 40)

    onnx_path = tmp_path / "tiny.onnx"
    export_onnx(net.eval(), onnx_path, {"name": "tiny", "version": "0.0.1"})
    worst = check_parity(net.eval(), onnx_path)
    assert worst <= PARITY_ATOL
    segmenter = OnnxSegmenter(onnx_path)
    info = segmenter.load()
    assert (info.name, info.version) == ("tiny", "0.0.1")
    batch = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    assert segmenter.predict(batch).shape == (2, 37, 53)


def test_fine_tuning_starts_from_the_given_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=2, batch_size=2, crop=32, val_every=1, channels=(8, 16), bottleneck=16)
    train(tiny_dataset, tiny_dataset, tmp_path / "a.pt", config, progress=False)
    start, _ = load_checkpoint(tmp_path / "a.pt")
    config.lr = 1e-12  # nothing moves: the result must equal the starting weights
    train(tiny_dataset, tiny_dataset, tmp_path / "b.pt", config, init=tmp_path / "a.pt", progress=False)
    tuned, _ = load_checkpoint(tmp_path / "b.pt")
    for name, value in start.state_dict().items():
        if value.dtype.is_floating_point and "running" not in name:
            torch.testing.assert_close(value, tuned.state_dict()[name], atol=1e-6, rtol=0)


def test_split_is_deterministic_and_keeps_both_sides() -> None:
    pairs = [(np.full((2, 2, 3), i, np.uint8), np.zeros((2, 2), np.uint8)) for i in range(10)]
    train_a, val_a = split_pairs(pairs, 0.2, seed=3)
    _, val_b = split_pairs(pairs, 0.2, seed=3)
    assert [int(p[0][0, 0, 0]) for p in val_a] == [int(p[0][0, 0, 0]) for p in val_b]
    assert (len(train_a), len(val_a)) == (8, 2)
    assert len(split_pairs(pairs[:2], 0.9, seed=0)[0]) == 1
    with pytest.raises(DatasetError, match="at least 2"):
        split_pairs(pairs[:1], 0.1, seed=0)


@pytest.mark.slow
def test_train_and_export_commands_without_a_validation_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "cli.pt"
    argv = [
        "-q",
        "train",
        "--data",
        str(tiny_dataset),
        "--out",
        str(checkpoint),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--crop",
        "32",
        "--val-every",
        "1",
        "--val-fraction",
        "0.25",
    ]
    assert main(argv) == 0
    report = json.loads(checkpoint.with_suffix(".json").read_text())
    assert (report["train_images"], report["val_images"]) == (6, 2)
    onnx_path = tmp_path / "cli.onnx"
    argv = ["-q", "export", "--checkpoint", str(checkpoint), "--out", str(onnx_path), "--version", "9.9.9"]
    assert main(argv) == 0
    segmenter = OnnxSegmenter(onnx_path)
    assert segmenter.load().version == "9.9.9"


@pytest.mark.slow
def test_make_model_recipe_in_miniature(tiny_dataset: Path, tmp_path: Path) -> None:
    """generate -> train (2 stages) -> export (calibrated) -> evaluate -> profile -> card."""
    artifacts = tmp_path / "model" / "artifacts"
    onnx_path = artifacts / "cropseg-unet.onnx"
    (tmp_path / "README.md").write_text(
        "intro\n<!-- model-table:start -->\nold\n<!-- model-table:end -->\nend\n"
    )
    common = ["--data", str(tiny_dataset), "--val", str(tiny_dataset), "--batch-size", "2", "--crop", "32"]
    assert (
        main(["-q", "train", *common, "--out", str(tmp_path / "s1.pt"), "--steps", "2", "--val-every", "1"])
        == 0
    )
    argv = [
        "-q",
        "train",
        *common,
        "--out",
        str(tmp_path / "s2.pt"),
        "--steps",
        "2",
        "--val-every",
        "1",
        "--init",
        str(tmp_path / "s1.pt"),
        "--lr",
        "1e-3",
        "--seed",
        "1",
    ]
    assert main(argv) == 0
    argv = [
        "-q",
        "export",
        "--checkpoint",
        str(tmp_path / "s2.pt"),
        "--out",
        str(onnx_path),
        "--report",
        str(tmp_path / "export.json"),
        "--calibrate",
        str(tiny_dataset),
    ]
    assert main(argv) == 0
    export = json.loads((tmp_path / "export.json").read_text())
    assert export["threshold"] in export["threshold_calibration"]
    argv = [
        "-q",
        "evaluate",
        "--model",
        str(onnx_path),
        "--data",
        str(tiny_dataset),
        "--out",
        str(tmp_path / "eval.json"),
        "--robustness",
    ]
    assert main(argv) == 0
    argv = [
        "-q",
        "profile",
        "--model",
        str(onnx_path),
        "--data",
        str(tiny_dataset),
        "--out",
        str(artifacts / "reference_profile.npz"),
    ]
    assert main(argv) == 0

    metrics_path, card_path = write_card(
        tmp_path / "s2.json",
        tmp_path / "export.json",
        tmp_path / "eval.json",
        artifacts,
        tmp_path / "s1.json",
    )
    metrics = json.loads(metrics_path.read_text())
    assert len(metrics["training"]["stages"]) == 2
    table = markdown_table(metrics["evaluation"])
    card = card_path.read_text()
    assert table in card
    assert "| 2 | 2 | 0.001 | 1 |" in card
    assert "of 8 reference tiles" in card
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n")
    assert table in readme
    assert "old" not in readme
    for figure in ("examples.png", "training_curve.png"):
        assert (artifacts / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
