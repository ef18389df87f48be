"""U-Net training: random multi-scale crops with photometric augmentation, BCE + Dice loss
(ignoring pixels marked 128), validation on whole tiles, best checkpoint kept.

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

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cropseg_core.files import write_atomic
from cropseg_core.masks import IGNORE, score
from cropseg_model.datasets import DatasetError, discover, load_masked
from cropseg_model.metrics import summarise
from cropseg_model.unet import UNet, count_parameters

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 4000
    batch_size: int = 16
    crop: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    min_scale: float = 0.5
    max_scale: float = 1.6
    val_every: int = 250
    val_fraction: float = 0.1
    seed: int = 0
    channels: tuple[int, ...] = (16, 32, 64)
    bottleneck: int = 128


def load_pairs(root: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    return [load_masked(s) for s in discover(root)]


def split_pairs(
    pairs: list[tuple[np.ndarray, np.ndarray]], val_fraction: float, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """Deterministic train/validation split of one folder (at least one image on each side)."""
    if len(pairs) < 2:
        raise DatasetError("need at least 2 labelled images to split off a validation set; pass --val")
    order = np.random.default_rng(seed).permutation(len(pairs))
    count = min(max(1, round(len(pairs) * val_fraction)), len(pairs) - 1)
    return [pairs[i] for i in order[count:]], [pairs[i] for i in order[:count]]


class CropSampler:
    """Draws augmented training crops: random scale (multi-scale training), flips, 90° turns,
    exposure/gamma/colour-balance jitter, blur and noise. Scale changes resize the image
    with area/linear interpolation and the mask with nearest neighbour, so it stays exact."""

    def __init__(self, pairs: list[tuple[np.ndarray, np.ndarray]], config: TrainConfig) -> None:
        self.pairs = pairs
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        cfg, rng = self.config, self.rng
        image, mask = self.pairs[int(rng.integers(len(self.pairs)))]
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
        gain = math.exp(rng.normal(0, 0.3)) * rng.uniform(0.9, 1.1, size=3)
        pixels = np.clip(pixels * gain, 0, 1) ** math.exp(rng.normal(0, 0.2))
        if rng.random() < 0.2:
            pixels = cv2.GaussianBlur(pixels, (0, 0), rng.uniform(0.3, 1.2))
        if rng.random() < 0.3:
            pixels = pixels + rng.normal(0, rng.uniform(0.005, 0.03), pixels.shape)
        pixels = np.clip(pixels, 0, 1)
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
def predict_probabilities(net: UNet, images: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    """Vegetation probability (H, W) of each RGB uint8 image, one image at a time."""
    net.eval()
    probabilities = []
    for image in images:
        x = torch.tensor(image).permute(2, 0, 1)[None].float().div(255).to(device)
        probabilities.append(torch.sigmoid(net(x))[0, 0].cpu().numpy())
    return probabilities


def predict_masks(net: UNet, images: list[np.ndarray], device: torch.device) -> list[np.ndarray]:
    return [np.where(p > 0.5, 255, 0).astype(np.uint8) for p in predict_probabilities(net, images, device)]


def validate(
    net: UNet, pairs: list[tuple[np.ndarray, np.ndarray]], device: torch.device
) -> dict[str, float | int]:
    predictions = predict_masks(net, [image for image, _ in pairs], device)
    return summarise(score(p, m, i) for p, (i, m) in zip(predictions, pairs, strict=True))


def save_checkpoint(
    path: Path, net: UNet, config: TrainConfig, step: int, metrics: dict[str, float | int]
) -> None:
    buffer = io.BytesIO()
    torch.save(
        {"state_dict": net.state_dict(), "config": asdict(config), "step": step, "val": metrics}, buffer
    )
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> tuple[UNet, dict[str, object]]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = payload["config"]
    net = UNet(tuple(config["channels"]), config["bottleneck"])
    net.load_state_dict(payload["state_dict"])
    return net, payload


def train(
    train_dir: Path,
    val_dir: Path | None,
    out: Path,
    config: TrainConfig,
    init: Path | None = None,
    progress: bool = True,
) -> dict[str, object]:
    """Train and keep the best checkpoint (by validation IoU on non-black tiles) at ``out``.

    Without ``val_dir`` a ``config.val_fraction`` of ``train_dir`` is held out for validation.
    """
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if val_dir is None:
        train_pairs, val_pairs = split_pairs(load_pairs(train_dir), config.val_fraction, config.seed)
    else:
        train_pairs, val_pairs = load_pairs(train_dir), load_pairs(val_dir)
    if init is not None:
        net, _ = load_checkpoint(init)
    else:
        net = UNet(config.channels, config.bottleneck)
    net.to(device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    sampler = CropSampler(train_pairs, config)
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
            metrics = validate(net, val_pairs, device)
            metrics = {"step": step, "loss": running, **metrics}
            history.append(metrics)
            log.info("step %d: loss %.4f, val IoU (non-black) %.4f", step, running, metrics["iou_non_black"])
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
        "train_images": len(train_pairs),
        "val_images": len(val_pairs),
        "torch_threads": torch.get_num_threads(),
        "parameters": count_parameters(net),
    }
