"""The cropseg U-Net (PyTorch; training only, never imported by a service).

Same family as the seed's network, one level deeper (encoder 16-32-64-128 channels, a
256-channel bottleneck: a wider view for shadows and context at little cost, since the
extra level runs at 1/8 and 1/16 of the resolution), with two changes that matter in
production:

* **Pixel alignment.** Convolutions are padded ("same"), the input is padded on the
  right/bottom to a multiple of 16 inside the network and the output is cropped back, so
  the mask has exactly the input's size and is aligned pixel for pixel, for any size.
  (The seed used unpadded convolutions and resized the smaller output, shifting masks.)
* **Bands, not pictures.** The input is the four bands of
  :data:`cropseg_core.bands.MODEL_BANDS` (red, green, blue, near-infrared); a band the
  camera lacks is 0 over the whole image and the network is told so (presence flags). From
  the bands it computes per-image standardised bands (mean/std over in-field pixels, so
  black out-of-field regions do not skew them), chromaticity of the visible bands,
  intensity, the vegetation index the bands allow (excess green where red, green and blue
  exist; NDVI = (NIR - R) / (NIR + R) where NIR and red exist) and an in-field indicator.
  Dark soil and shadows then look different from leaves by contrast with their own image,
  the way a per-image threshold like Otsu's tells them apart, and the index is the signal
  QGIS or OpenDroneMap would threshold.

:class:`ExportedSegmenter` wraps the network for ONNX: uint8 NHWC bands in, vegetation
probability NCHW out, so a client needs no preprocessing at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BANDS = 4  # red, green, blue, nir (cropseg_core.bands.MODEL_BANDS)
FEATURE_CHANNELS = 15
BLACK_LEVEL = 2.0 / 255.0


def input_features(bands: torch.Tensor) -> torch.Tensor:
    """(N, 4, H, W) red, green, blue, NIR in [0, 1] (absent band: all 0) -> (N, 15, H, W)."""
    present = (bands.amax(dim=(2, 3), keepdim=True) > 0).to(bands.dtype)  # (N, 4, 1, 1)
    valid = (bands.amax(dim=1, keepdim=True) > BLACK_LEVEL).to(bands.dtype)
    count = valid.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    mean = (bands * valid).sum(dim=(2, 3), keepdim=True) / count
    var = ((bands - mean) ** 2 * valid).sum(dim=(2, 3), keepdim=True) / count
    standardised = (bands - mean) / torch.sqrt(var + 1e-4) * valid * present
    visible = bands[:, :3]
    chromaticity = (visible / (visible.sum(dim=1, keepdim=True) + 1e-3) * 3.0 - present[:, :3]) * valid
    intensity = (bands * present).sum(dim=1, keepdim=True) / present.sum(dim=1, keepdim=True).clamp_min(1.0)
    red, green, blue, nir = bands[:, 0:1], bands[:, 1:2], bands[:, 2:3], bands[:, 3:4]
    has_rgb = present[:, 0:1] * present[:, 1:2] * present[:, 2:3]
    has_ndvi = present[:, 0:1] * present[:, 3:4]
    exg = (2 * green - red - blue) / (red + green + blue + 1e-3) * has_rgb * valid
    ndvi = (nir - red) / (nir + red + 1e-3) * has_ndvi * valid
    flags = present.expand(-1, -1, bands.shape[2], bands.shape[3])
    return torch.cat([standardised, chromaticity, intensity, exg, ndvi, flags, valid], dim=1)


class ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Bands (N, 4, H, W) in [0, 1] -> vegetation logits (N, 1, H, W), any H and W."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64, 128), bottleneck: int = 256) -> None:
        super().__init__()
        self.channels = tuple(channels)
        self.bottleneck_channels = bottleneck
        self.multiple = 2 ** len(channels)
        encoders, previous = [], FEATURE_CHANNELS
        for width in channels:
            encoders.append(ConvBlock(previous, width))
            previous = width
        self.encoders = nn.ModuleList(encoders)
        self.bottleneck = ConvBlock(previous, bottleneck)
        ups, decoders, previous = [], [], bottleneck
        for width in reversed(channels):
            ups.append(nn.ConvTranspose2d(previous, width, kernel_size=2, stride=2))
            decoders.append(ConvBlock(2 * width, width))
            previous = width
        self.ups = nn.ModuleList(ups)
        self.decoders = nn.ModuleList(decoders)
        self.head = nn.Conv2d(previous, 1, kernel_size=1)

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        height, width = bands.shape[-2], bands.shape[-1]
        x = input_features(bands)
        pad_bottom = (self.multiple - height % self.multiple) % self.multiple
        pad_right = (self.multiple - width % self.multiple) % self.multiple
        x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="replicate")
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :height, :width]


class ExportedSegmenter(nn.Module):
    """What goes into the ONNX file: uint8 (N, H, W, 4) bands -> float (N, 1, H, W) probability."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        bands = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return torch.sigmoid(self.net(bands))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
