"""Training: random multi-scale crops with photometric augmentation, BCE + Dice loss
(ignoring pixels marked 128), validation on whole images, best checkpoint kept.

Training draws from several folders with weights (e.g. real photos and synthetic tiles).
A crop from an image with all four bands (synthetic tiles) is shown to the network in a
sensor layout drawn per crop (:data:`LAYOUT_WEIGHTS`): the bands that layout lacks are set
to 0, exactly as :func:`cropseg_core.bands.to_model_bands` leaves them for a user's file.
Real RGB photos stay RGB.

Checkpoints are chosen on *selection* folders (``--val``, the mean of their IoUs): for
real data a part of the source's training split set aside (``model/data/real/*/select``),
so that the real validation split stays untouched for the final evaluation.

CPU works (the committed model was trained on 2 cores); a GPU is used when present.
Fine-tuning on a user's own data or pseudo-labels starts from ``--init`` checkpoint.
"""

from __future__ import annotations

import io
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cropseg_core.bands import LAYOUTS
from cropseg_core.files import write_atomic
from cropseg_core.masks import IGNORE, score
from cropseg_model.datasets import DatasetError, discover, load_masked
from cropseg_model.metrics import summarise
from cropseg_model.unet import DECODER_CHANNELS, EfficientUNet, Network, UNet, count_parameters

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 16
    crop: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    min_scale: float = 0.35
    max_scale: float = 1.8
    val_every: int = 250
    seed: int = 0
    architecture: str = "efficientnet-lite0"
    """An encoder of :data:`ENCODERS` under the U-Net decoder, or "unet" (the plain U-Net, from scratch)."""
    pretrained: bool = True
    """Start the encoder from its ImageNet weights (False: random initialisation, the ablation)."""
    index_channels: bool = True
    full_resolution: bool = True
    decoder: tuple[int, ...] = DECODER_CHANNELS
    channels: tuple[int, ...] = (16, 32, 64, 128)
    bottleneck: int = 256
    encoder_lr_scale: float = 0.3
    """The pretrained encoder learns at this fraction of the decoder's learning rate."""


def build_network(config: TrainConfig, *, pretrained: bool | None = None) -> Network:
    """The network ``config`` describes; ``pretrained`` overrides the config (False when
    weights are about to be loaded from a checkpoint anyway)."""
    if config.architecture == "unet":
        return UNet(config.channels, config.bottleneck)
    return EfficientUNet(
        config.architecture,
        config.decoder,
        pretrained=config.pretrained if pretrained is None else pretrained,
        index_channels=config.index_channels,
        full_resolution=config.full_resolution,
    )


def parameter_groups(net: Network, config: TrainConfig) -> list[dict[str, Any]]:
    """The pretrained encoder at ``encoder_lr_scale`` of the learning rate, the rest at it."""
    if not isinstance(net, EfficientUNet) or not config.pretrained:
        return [{"params": list(net.parameters()), "lr": config.lr}]
    encoder = {id(p) for p in net.blocks.parameters()} | {id(p) for p in net.stem.parameters()}
    pretrained = [p for p in net.parameters() if id(p) in encoder]
    fresh = [p for p in net.parameters() if id(p) not in encoder]
    return [
        {"params": pretrained, "lr": config.lr * config.encoder_lr_scale},
        {"params": fresh, "lr": config.lr},
    ]


LAYOUT_WEIGHTS = {"rgb": 0.5, "cir": 0.2, "rgbn": 0.1, "nir_red": 0.1, "red_nir": 0.1}
"""Layouts drawn for crops of four-band images (synthetic tiles)."""
SELECTION_LAYOUTS = ("rgb", "cir")
"""A four-band selection folder is scored in each of these layouts, as separate sets: a
checkpoint must be good without near-infrared as well as with it."""
Pairs = list[tuple[np.ndarray, np.ndarray]]


def load_pairs(root: Path) -> Pairs:
    """(bands (H, W, 4), mask) of every labelled image of ``root``."""
    return [load_masked(s) for s in discover(root)]


@dataclass(frozen=True)
class Source:
    """A training folder and how often it is drawn from, relative to the others."""

    folder: Path
    weight: float = 1.0


def selection_views(name: str, pairs: Pairs) -> dict[str, Pairs]:
    """``{name: pairs}``, or for four-band images one view per SELECTION_LAYOUTS (absent bands 0)."""
    if not any(image[..., 3].any() for image, _ in pairs):
        return {name: pairs}
    views = {}
    for layout in SELECTION_LAYOUTS:
        present = np.array(LAYOUTS[layout].present(), np.uint8)
        views[f"{name} ({layout})"] = [(image * present, mask) for image, mask in pairs]
    return views


def parse_source(text: str) -> Source:
    """``DIR`` or ``DIR:WEIGHT`` (weight > 0) -> Source."""
    folder, separator, weight = text.rpartition(":")
    if not separator:
        return Source(Path(text))
    try:
        value = float(weight)
    except ValueError as e:
        raise DatasetError(f"{text}: expected DIR or DIR:WEIGHT with a number") from e
    if value <= 0:
        raise DatasetError(f"{text}: the weight must be positive")
    return Source(Path(folder), value)


class CropSampler:
    """Draws augmented training crops: a source by weight, an image, random scale
    (multi-scale training), flips, 90° turns, a sensor layout for four-band images,
    exposure/gamma/per-band gain jitter, blur and noise. Scale changes resize the image
    with area/linear interpolation and the mask with nearest neighbour, so it stays exact."""

    def __init__(self, sources: list[tuple[Pairs, float]], config: TrainConfig) -> None:
        self.sources = [pairs for pairs, _ in sources]
        weights = np.array([weight for _, weight in sources], np.float64)
        self.weights = weights / weights.sum()
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.layouts = list(LAYOUT_WEIGHTS)
        layout_weights = np.array(list(LAYOUT_WEIGHTS.values()))
        self.layout_weights = layout_weights / layout_weights.sum()

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        cfg, rng = self.config, self.rng
        pairs = self.sources[int(rng.choice(len(self.sources), p=self.weights))]
        image, mask = pairs[int(rng.integers(len(pairs)))]
        scale = math.exp(rng.uniform(math.log(cfg.min_scale), math.log(cfg.max_scale)))
        window = max(8, min(round(cfg.crop / scale), *image.shape[:2]))
        y = int(rng.integers(0, image.shape[0] - window + 1))
        x = int(rng.integers(0, image.shape[1] - window + 1))
        img = image[y : y + window, x : x + window]
        msk = mask[y : y + window, x : x + window]
        if window != cfg.crop:
            interp = cv2.INTER_AREA if window > cfg.crop else cv2.INTER_LINEAR
            img = cv2.resize(img, (cfg.crop, cfg.crop), interpolation=interp)
            msk = cv2.resize(msk, (cfg.crop, cfg.crop), interpolation=cv2.INTER_NEAREST)
        turns = int(rng.integers(4))
        img, msk = np.rot90(img, turns), np.rot90(msk, turns)
        if rng.random() < 0.5:
            img, msk = img[:, ::-1], msk[:, ::-1]
        pixels: np.ndarray = img.astype(np.float32) / 255.0
        black = img.max(axis=2) <= 2
        if image[..., 3].any():  # four bands: show them in a layout drawn for this crop
            layout = LAYOUTS[self.layouts[int(rng.choice(len(self.layouts), p=self.layout_weights))]]
            present = np.array(layout.present(), np.float32)
        else:  # a photo keeps the bands it has
            present = (image.reshape(-1, image.shape[2]).max(axis=0) > 0).astype(np.float32)
        gain = math.exp(rng.normal(0, 0.3)) * rng.uniform(0.9, 1.1, size=pixels.shape[2])
        pixels = np.clip(pixels * gain, 0, 1) ** math.exp(rng.normal(0, 0.2))
        if rng.random() < 0.2:
            pixels = cv2.GaussianBlur(pixels, (0, 0), rng.uniform(0.3, 1.2))
        if rng.random() < 0.3:
            pixels = pixels + rng.normal(0, rng.uniform(0.005, 0.03), pixels.shape)
        pixels = np.clip(pixels, 0, 1) * present  # an absent band stays exactly 0
        pixels[black] = 0  # out-of-field stays exactly black, as in real tiles
        return pixels.transpose(2, 0, 1).astype(np.float32), np.ascontiguousarray(msk)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, masks = zip(*(self.sample() for _ in range(self.config.batch_size)), strict=True)
        mask = torch.from_numpy(np.stack(masks))[:, None]
        target = (mask > 127).float()
        weight = (mask != IGNORE).float()
        return torch.from_numpy(np.stack(images)), target, weight


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice, both ignoring pixels with weight 0."""
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    bce = bce / weight.sum().clamp_min(1.0)
    probability = torch.sigmoid(logits) * weight
    intersection = (probability * target).sum()
    dice = 1 - (2 * intersection + 1) / (probability.sum() + (target * weight).sum() + 1)
    return bce + dice


@torch.no_grad()
def predict_probabilities(net: Network, images: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Vegetation probability (H, W) of each (H, W, 4) uint8 bands image, one at a time."""
    net.eval()
    probabilities = []
    for image in images:
        x = torch.tensor(image).permute(2, 0, 1)[None].float().div(255).to(device)
        probabilities.append(torch.sigmoid(net(x))[0, 0].cpu().numpy())
    return probabilities


def predict_masks(net: Network, images: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    return [np.where(p > 0.5, 255, 0).astype(np.uint8) for p in predict_probabilities(net, images, device)]


def validate(net: Network, pairs: Pairs, device: torch.device) -> dict[str, float | int]:
    predictions = predict_masks(net, [image for image, _ in pairs], device)
    return summarise(score(p, m, i) for p, (i, m) in zip(predictions, pairs, strict=True))


def validate_sets(net: Network, sets: dict[str, Pairs], device: torch.device) -> dict[str, float | int]:
    """IoU (non-black) of each selection set and their mean (``iou_non_black``)."""
    scores = {name: float(validate(net, pairs, device)["iou_non_black"]) for name, pairs in sets.items()}
    return {
        "iou_non_black": float(np.mean(list(scores.values()))),
        **{f"iou/{n}": v for n, v in scores.items()},
    }


def save_checkpoint(
    path: Path, net: Network, config: TrainConfig, step: int, metrics: dict[str, float | int]
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {"state_dict": net.state_dict(), "config": asdict(config), "step": step, "val": metrics}, buffer
    )
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> tuple[Network, dict[str, object]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    # Checkpoints from before the config named an architecture hold the plain U-Net.
    fields = {**asdict(TrainConfig(architecture="unet")), **payload["config"]}
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    net = build_network(TrainConfig(**fields), pretrained=False)
    net.load_state_dict(payload["state_dict"])
    return net, payload


def train(
    sources: list[Source],
    val_dirs: list[Path],
    out: Path,
    config: TrainConfig,
    init: Path | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Train on weighted ``sources`` and keep the best checkpoint at ``out``, chosen by the
    mean IoU (non-black) over the folders of ``val_dirs``."""
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not val_dirs:
        raise DatasetError("nothing to choose the checkpoint on: give at least one --val folder")
    training = [(load_pairs(source.folder), source.weight) for source in sources]
    selection: dict[str, Pairs] = {}
    for folder in val_dirs:
        selection.update(selection_views(f"{folder.parent.name}/{folder.name}", load_pairs(folder)))
    if init is not None:
        net, _ = load_checkpoint(init)
    else:
        net = build_network(config)
    net.to(device)
    groups = parameter_groups(net, config)
    optimiser = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=[g["lr"] for g in groups], total_steps=config.steps, pct_start=0.1
    )
    sampler = CropSampler(training, config)
    best: dict[str, float | int] = {"iou_non_black": -1.0}
    history: list[dict[str, float | int]] = []
    started = time.perf_counter()
    bar = tqdm(range(1, config.steps + 1), desc="training", unit="step", disable=not progress)
    running = None
    for step in bar:
        net.train()
        images, target, weight = sampler.batch()
        logits = net(images.to(device))
        loss = segmentation_loss(logits, target.to(device), weight.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        schedule.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}", best_iou=f"{best['iou_non_black']:.4f}")
        if step % config.val_every == 0 or step == config.steps:
            metrics = {"step": step, "loss": running, **validate_sets(net, selection, device)}
            history.append(metrics)
            log.info("step %d: loss %.4f, selection IoU %s", step, running,
                     {k: round(float(v), 4) for k, v in metrics.items() if k.startswith("iou")})  # fmt: skip
            if metrics["iou_non_black"] > best["iou_non_black"]:
                best = metrics
                save_checkpoint(out, net.cpu(), config, step, metrics)
                net.to(device)
    return {
        "config": asdict(config),
        "best": best,
        "history": history,
        "train_seconds": round(time.perf_counter() - started, 1),
        "device": str(device),
        "sources": [
            {"folder": str(s.folder), "weight": s.weight, "images": len(p)}
            for s, (p, _) in zip(sources, training, strict=True)
        ],
        "selection_sets": {name: len(pairs) for name, pairs in selection.items()},
        "train_images": sum(len(p) for p, _ in training),
        "torch_threads": torch.get_num_threads(),
        "parameters": count_parameters(net),
    }
