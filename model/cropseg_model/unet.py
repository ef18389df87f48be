"""The cropseg U-Net (PyTorch; training only, never imported by a service).

Same family as the seed's network (encoder 16-32-64 channels, a 128-channel bottleneck),
with two changes that matter in production:

* **Pixel alignment.** Convolutions are padded ("same"), the input is padded on the
  right/bottom to a multiple of 8 inside the network and the output is cropped back, so
  the mask has exactly the input's size and is aligned pixel for pixel, for any size.
  (The seed used unpadded convolutions and resized the smaller output, shifting masks.)
* **Relative inputs.** The network never sees absolute colour alone. From the RGB input it
  computes per-image standardised channels (mean/std over in-field pixels, so black
  out-of-field regions do not skew them), chromaticity (each channel over the sum, the
  basis of excess-green), intensity and an in-field indicator. Dark, slightly green soil
  and shadows then look different from leaves by contrast with their own image, the way a
  per-image threshold like Otsu's tells them apart.

:class:`ExportedSegmenter` wraps the network for ONNX: uint8 NHWC RGB in, vegetation
probability NCHW out, so a client needs no preprocessing at all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FEATURE_CHANNELS = 8
BLACK_LEVEL = 2.0 / 255.0


def input_features(rgb: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 8, H, W) relative features."""
    valid = (rgb.amax(dim=1, keepdim=True) > BLACK_LEVEL).to(rgb.dtype)
    count = valid.sum(dim=(2, 3), keepdim=True).clamp_min(1.0)
    mean = (rgb * valid).sum(dim=(2, 3), keepdim=True) / count
    var = ((rgb - mean) ** 2 * valid).sum(dim=(2, 3), keepdim=True) / count
    standardised = (rgb - mean) / torch.sqrt(var + 1e-4) * valid
    chromaticity = (rgb / (rgb.sum(dim=1, keepdim=True) + 1e-3) - 1.0 / 3.0) * 3.0 * valid
    intensity = rgb.mean(dim=1, keepdim=True)
    return torch.cat([standardised, chromaticity, intensity, valid], dim=1)


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
    """RGB (N, 3, H, W) in [0, 1] -> vegetation logits (N, 1, H, W), any H and W."""

    def __init__(self, channels: tuple[int, ...] = (16, 32, 64), bottleneck: int = 128) -> None:
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

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        height, width = rgb.shape[-2], rgb.shape[-1]
        x = input_features(rgb)
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
    """What goes into the ONNX file: uint8 (N, H, W, 3) RGB -> float (N, 1, H, W) probability."""

    def __init__(self, net: UNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        rgb = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return torch.sigmoid(self.net(rgb))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
