"""Network, training and export: need the training extra (torch, onnx).

In CI these must run: a missing torch is a failure there, not a skip."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cropseg_core.features import load_reference_profile
from cropseg_core.segmenter import OnnxSegmenter
from cropseg_model.ablation import ablation_table
from cropseg_model.card import write_card
from cropseg_model.cli import main
from cropseg_model.datasets import DatasetError
from cropseg_model.evaluate import layout_table
from cropseg_model.evaluation_report import EvaluationReport
from cropseg_model.export import PARITY_ATOL, check_parity, export_onnx
from cropseg_model.train import (
    CropSampler,
    Source,
    TrainConfig,
    load_checkpoint,
    load_pairs,
    parse_source,
    segmentation_loss,
    train,
)
from cropseg_model.unet import EfficientUNet, UNet, input_features, pretrained_weights

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def efficient() -> EfficientUNet:
    torch.manual_seed(0)
    return EfficientUNet(pretrained=True).eval()


@pytest.mark.slow
@pytest.mark.parametrize("size", [(1, 1), (7, 9), (33, 47), (64, 64), (360, 480)], ids=str)
def test_output_has_exactly_the_input_size(size: tuple[int, int], efficient: EfficientUNet) -> None:
    for net in (UNet().eval(), efficient):
        with torch.no_grad():
            out = net(torch.rand(2, 4, *size))
        assert out.shape == (2, 1, *size)


@pytest.mark.parametrize("kind", ["unet", "efficientnet-lite0"])
def test_masks_are_aligned_not_shifted(kind: str, efficient: EfficientUNet) -> None:
    """Translating the input by one stride of the deepest level translates the output by
    exactly as much (8 px for the U-Net, 32 for the EfficientNet encoder)."""
    torch.manual_seed(0)
    net, shift = (UNet().eval(), 16) if kind == "unet" else (efficient, 32)
    image = torch.rand(1, 4, 8 * shift, 8 * shift)
    shifted = torch.roll(image, shifts=(shift, shift), dims=(2, 3))
    inner = slice(2 * shift, 5 * shift)
    moved = slice(3 * shift, 6 * shift)
    with torch.no_grad():
        a = net(image)[..., inner, inner]
        b = net(shifted)[..., moved, moved]
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_the_encoder_starts_as_the_pretrained_imagenet_network(efficient: EfficientUNet) -> None:
    """The package's ImageNet weights are loaded, and the extra input channels start at zero:
    on a photo the encoder computes exactly what the pretrained EfficientNet-Lite0 computes
    on the ImageNet-normalised picture."""
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    reference.load_state_dict(torch.load(pretrained_weights("efficientnet-lite0"), weights_only=True))
    reference.eval()
    photo = torch.rand(1, 4, 64, 64) * 0.8 + 0.1
    photo[:, 3] = 0  # no NIR: a true-colour photo
    with torch.no_grad():
        ours = efficient.stem(efficient.stem_input(photo))
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        theirs = reference._swish(reference._bn0(reference._conv_stem((photo[:, :3] - mean) / std)))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert not efficient.stem[0].weight[:, 3:].detach().any()  # the extra channels start at zero
    random = EfficientUNet(pretrained=False)
    first = efficient.blocks[0]._depthwise_conv.weight
    assert not torch.equal(random.blocks[0]._depthwise_conv.weight, first)


def test_standardised_features_ignore_exposure_and_black_regions() -> None:
    image = torch.rand(1, 4, 20, 20) * 0.5 + 0.1
    brighter = image * 1.6
    features, features_bright = input_features(image), input_features(brighter)
    # standardised bands (0-3), chromaticity (4-6), ExG and NDVI (8-9) do not change with exposure
    stable = [0, 1, 2, 3, 4, 5, 6, 8, 9]
    torch.testing.assert_close(features[:, stable], features_bright[:, stable], atol=1e-2, rtol=1e-2)
    padded = torch.zeros(1, 4, 20, 40)
    padded[..., :20] = image
    torch.testing.assert_close(
        input_features(padded)[:, stable, :, :20], features[:, stable], atol=1e-3, rtol=1e-3
    )


def test_absent_bands_are_flagged_and_indices_follow_the_bands() -> None:
    """An RGB image (NIR all 0) gets excess green and no NDVI; a red/NIR pair the reverse."""
    green_leaf = torch.tensor([0.1, 0.5, 0.1, 0.0]).view(1, 4, 1, 1).expand(1, 4, 4, 4).clone()
    features = input_features(green_leaf)
    assert features[0, 10:14, 0, 0].tolist() == [1.0, 1.0, 1.0, 0.0]  # presence flags
    assert float(features[0, 8, 0, 0]) > 0.5  # excess green
    assert float(features[0, 9, 0, 0]) == 0.0  # no NDVI
    red_nir = torch.tensor([0.1, 0.0, 0.0, 0.6]).view(1, 4, 1, 1).expand(1, 4, 4, 4).clone()
    features = input_features(red_nir)
    assert features[0, 10:14, 0, 0].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert float(features[0, 8, 0, 0]) == 0.0  # no excess green
    assert float(features[0, 9, 0, 0]) > 0.6  # NDVI


def test_loss_ignores_pixels_marked_128() -> None:
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    weight = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    segmentation_loss(logits, target, weight).backward()
    assert logits.grad is not None
    assert logits.grad[0, 0, 1].abs().sum() == 0
    assert logits.grad[0, 0, 0].abs().sum() > 0


def test_sampler_keeps_masks_exact_and_black_black(tiny_dataset: Path) -> None:
    sampler = CropSampler([(load_pairs(tiny_dataset), 1.0)], TrainConfig(crop=48, batch_size=4))
    images, target, weight = sampler.batch()
    assert images.shape == (4, 4, 48, 48)
    assert target.shape == (4, 1, 48, 48)
    assert set(torch.unique(target).tolist()) <= {0.0, 1.0}
    assert weight.min() == 1.0  # generated masks have no ignore pixels
    assert float(images.min()) >= 0.0
    assert float(images.max()) <= 1.0


@pytest.mark.slow
def test_sampler_shows_four_band_tiles_in_every_layout_and_rgb_photos_as_rgb(tiny_dataset: Path) -> None:
    four_band = load_pairs(tiny_dataset)
    photos = [(image * np.array([1, 1, 1, 0], np.uint8), mask) for image, mask in four_band]
    sampler = CropSampler([(four_band, 1.0)], TrainConfig(crop=32, batch_size=64))
    present = {tuple((sampler.batch()[0][i].amax(dim=(1, 2)) > 0).tolist()) for i in range(64)}
    assert {(True, True, True, False), (True, True, False, True), (True, False, False, True)} <= present
    sampler = CropSampler([(photos, 1.0)], TrainConfig(crop=32, batch_size=16))
    assert float(sampler.batch()[0][:, 3].max()) == 0.0  # a photo without NIR never gets one


def test_sources_parse_with_weights() -> None:
    assert parse_source("data/a") == Source(Path("data/a"), 1.0)
    assert parse_source("data/a:0.4") == Source(Path("data/a"), 0.4)
    with pytest.raises(DatasetError, match="positive"):
        parse_source("data/a:0")
    with pytest.raises(DatasetError, match="DIR:WEIGHT"):
        parse_source("data/a:x")


@pytest.mark.slow
def test_tiny_training_run_reduces_the_loss_and_exports_with_parity(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    config = TrainConfig(
        steps=40,
        batch_size=4,
        crop=64,
        lr=5e-3,
        val_every=20,
        architecture="unet",
        channels=(8, 16),
        bottleneck=16,
    )
    report = train([Source(tiny_dataset)], [tiny_dataset], tmp_path / "tiny.pt", config, progress=False)
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
    batch = np.random.default_rng(0).integers(0, 256, (2, 37, 53, 4), dtype=np.uint8)
    assert segmenter.predict(batch).shape == (2, 37, 53)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_given_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    config = TrainConfig(
        steps=2, batch_size=2, crop=32, val_every=1, architecture="unet", channels=(8, 16), bottleneck=16
    )
    train([Source(tiny_dataset)], [tiny_dataset], tmp_path / "a.pt", config, progress=False)
    start, _ = load_checkpoint(tmp_path / "a.pt")
    config.lr = 1e-12  # nothing moves: the result must equal the starting weights
    train(
        [Source(tiny_dataset)],
        [tiny_dataset],
        tmp_path / "b.pt",
        config,
        init=tmp_path / "a.pt",
        progress=False,
    )
    tuned, _ = load_checkpoint(tmp_path / "b.pt")
    for name, value in start.state_dict().items():
        if value.dtype.is_floating_point and "running" not in name:
            torch.testing.assert_close(value, tuned.state_dict()[name], atol=1e-6, rtol=0)


@pytest.mark.slow
def test_train_and_export_commands_with_weighted_sources(tiny_dataset: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "cli.pt"
    argv = ["-q", "train", "--data", f"{tiny_dataset}:0.7", "--data", f"{tiny_dataset}:0.3",
            "--val", str(tiny_dataset), "--out", str(checkpoint), "--steps", "2", "--batch-size", "2",
            "--crop", "32", "--val-every", "1", "--architecture", "unet"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(checkpoint.with_suffix(".json").read_text())
    assert [s["weight"] for s in report["sources"]] == [0.7, 0.3]
    name = f"{tiny_dataset.parent.name}/{tiny_dataset.name}"  # four-band tiles: scored without and with NIR
    assert report["selection_sets"] == {f"{name} (rgb)": 8, f"{name} (cir)": 8}
    onnx_path = tmp_path / "cli.onnx"
    argv = ["-q", "export", "--checkpoint", str(checkpoint), "--out", str(onnx_path), "--version", "9.9.9",
            "--working-gsd-mm", "2.5"]  # fmt: skip
    assert main(argv) == 0
    info = OnnxSegmenter(onnx_path).load()
    assert (info.version, info.working_gsd_mm) == ("9.9.9", 2.5)
    with pytest.raises(SystemExit):  # no --val: nothing to choose the checkpoint on
        main(["-q", "train", "--data", str(tiny_dataset), "--out", str(checkpoint)])


@pytest.mark.slow
def test_make_model_recipe_in_miniature(tiny_dataset: Path, tmp_path: Path) -> None:
    """generate -> train -> export (calibrated) -> evaluate (real-like and four-band sets) ->
    profile -> card, as ``make model`` chains them."""
    artifacts = tmp_path / "model" / "artifacts"
    onnx_path = artifacts / "cropseg-unet.onnx"
    (tmp_path / "README.md").write_text(
        "intro\n<!-- model-table:start -->\nold\n<!-- model-table:end -->\nend\n"
    )
    photos = tmp_path / "real" / "val"  # the tiles as true-colour files: what the real folders hold
    for folder in ("images", "masks"):
        (photos / folder).mkdir(parents=True)
    for sample in sorted((tiny_dataset / "images").iterdir())[:4]:
        Image.open(sample).convert("RGB").save(photos / "images" / sample.name)
        (photos / "masks" / sample.name).write_bytes((tiny_dataset / "masks" / sample.name).read_bytes())
    argv = ["-q", "train", "--data", str(tiny_dataset), "--data", f"{photos}:0.5", "--val", str(tiny_dataset),
            "--batch-size", "2", "--crop", "32", "--out", str(tmp_path / "unet.pt"), "--steps", "2",
            "--val-every", "1"]  # fmt: skip
    assert main(argv) == 0
    argv = ["-q", "export", "--checkpoint", str(tmp_path / "unet.pt"), "--out", str(onnx_path),
            "--version", "0.1.0", "--report", str(tmp_path / "export.json"),
            "--calibrate", str(tiny_dataset)]  # fmt: skip
    assert main(argv) == 0
    export = json.loads((tmp_path / "export.json").read_text())
    assert export["threshold"] in export["threshold_calibration"]
    argv = ["-q", "evaluate", "--model", str(onnx_path), "--data", str(photos),
            "--synthetic", str(tiny_dataset), "--scales", "0.5,1", "--enlarge", "2",
            "--out", str(tmp_path / "eval.json")]  # fmt: skip
    assert main(argv) == 0
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    real, synthetic = evaluation["sets"]["real/val"], evaluation["sets"]["synthetic/tiles"]
    assert set(real["layouts"]) == {"rgb"}
    assert set(real["layouts"]["rgb"]) == {"unet", "exg_otsu", "green_kmeans"}
    assert set(synthetic["layouts"]) == {"rgb", "cir", "rgbn", "nir_red", "red_nir"}
    assert set(synthetic["layouts"]["cir"]) == {"unet", "unet_network_only", "ndvi_otsu", "difference_otsu"}
    assert 0 <= real["layouts"]["rgb"]["unet"]["boundary_f1"] <= 1
    assert set(real["scales"]) == {"0.5", "1"}
    assert set(real["enlargement"]["2"]) == {"unet_auto", "unet_full_resolution", "baseline"}
    argv = ["-q", "profile", "--model", str(onnx_path), "--data", str(tiny_dataset),
            "--calibrate", str(photos), "--check", str(photos),
            "--out", str(artifacts / "reference_profile.npz")]  # fmt: skip
    assert main(argv) == 0
    estimate = load_reference_profile(artifacts / "reference_profile.npz").meta["iou_estimate"]
    assert (estimate["calibrated_on"], list(estimate["tracking"])) == (["real/val"], ["real/val"])

    metrics_path, card_path = write_card(
        tmp_path / "unet.json", tmp_path / "export.json", tmp_path / "eval.json", artifacts
    )
    metrics = json.loads(metrics_path.read_text())
    assert metrics["model"]["licence"] == "CC-BY-SA-4.0"
    table = layout_table(EvaluationReport.model_validate(metrics["evaluation"]).sets)
    card = card_path.read_text()
    assert table in card
    assert "CC BY-SA 4.0" in card
    tiles = f"{tiny_dataset.parent.name}/{tiny_dataset.name}"
    assert f"(rgb, cir, rgbn, nir_red, red_nir: 8 {tiles})" in card
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n")
    assert table in readme
    assert "old" not in readme
    for figure in ("examples.png", "scale.png", "training_curve.png"):
        assert (artifacts / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_architecture_and_variant_are_usage_errors(
    tiny_dataset: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    common = ["--data", str(tiny_dataset), "--val", str(tiny_dataset), "--out", str(tmp_path / "x.json")]
    assert main(["-q", "train", *common, "--architecture", "resnet50"]) == 2
    assert "choose one of efficientnet-lite0" in capsys.readouterr().err
    assert main(["-q", "ablate", *common, "--variant", "bigger"]) == 2
    assert "unknown --variant 'bigger'" in capsys.readouterr().err


@pytest.mark.slow
def test_ablation_trains_exports_and_scores_each_variant(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ablation.json"
    argv = ["-q", "ablate", "--data", str(tiny_dataset), "--val", str(tiny_dataset), "--steps", "2",
            "--batch-size", "2", "--crop", "32", "--val-every", "1", "--real-val", str(tiny_dataset),
            "--variant", "plain U-Net of cropseg 1.x", "--out", str(out), "--synthetic", str(tiny_dataset),
            "--work", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    (variant,) = report["variants"]
    assert variant["architecture"] == "unet16-32-64-128-256"
    assert report["steps"] == 2
    name = f"{tiny_dataset.parent.name}/{tiny_dataset.name}"
    assert 0 <= variant["scores"][name]["iou_non_black"] <= 1
    assert 0 <= variant["scores"][f"synthetic/{tiny_dataset.name} (cir)"]["boundary_f1"] <= 1
    onnx = tmp_path / "work" / "plain-u-net-of-cropseg-1-x.onnx"
    assert "| plain U-Net of cropseg 1.x | 1.94 M |" in ablation_table(report)
    made = onnx.stat().st_mtime_ns
    assert main(argv) == 0  # a rerun keeps the unchanged variant instead of training it again
    assert onnx.stat().st_mtime_ns == made
    assert json.loads(out.read_text()) == report
