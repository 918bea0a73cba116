"""The spatial embedding: a feature-pyramid mask encoder giving n condition tokens per defect mask.

Mask (B, 1, H, W) -> resized to INPUT px -> a ResNet-style backbone (three stages) -> torchvision's
`FeaturePyramidNetwork` (lateral 1x1 convs + top-down sum) -> the finest pyramid level pooled to a
GRID x GRID map -> a linear map to n tokens -> LayerNorm whose gain starts at the token-embedding scale
(the tokens are spliced into the text encoder's *input*, so they must look like word embeddings).
Backbone: torchvision ResNet-50 (frozen batch norm, the mask repeated to 3 channels) with weights from
a local file when ``spatial_backbone_weights`` is set, else a small ResNet (torchvision `BasicBlock`s,
group norm) trained from scratch with the anomaly tokens. One encoder serves every defect type of a run.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from anoaug.generators.base import GeneratorError

FORMAT = "anoaug-ad-spatial"
INPUT = 64  # px the mask is resized to: masks are plain shapes, 64 px keeps their outline
GRID = 4


def _group_norm(channels: int) -> Any:
    from torch import nn

    return nn.GroupNorm(min(8, channels), channels)


def _small_backbone(width: int) -> Any:
    """Stem + three stages of torchvision `BasicBlock`s (strides 2, 1, 2, 2): features at 1/2, 1/4, 1/8."""
    from torch import nn
    from torchvision.models.resnet import BasicBlock, conv1x1

    class SmallResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(1, width, 3, stride=2, padding=1, bias=False), _group_norm(width), nn.ReLU()
            )
            chans = [width, 2 * width, 4 * width]
            self.stages = nn.ModuleList()
            prev = width
            for i, c in enumerate(chans):
                stride = 1 if i == 0 else 2
                down = None if stride == 1 and prev == c else nn.Sequential(conv1x1(prev, c, stride), _group_norm(c))
                self.stages.append(BasicBlock(prev, c, stride, down, norm_layer=_group_norm))
                prev = c
            self.channels = chans

        def forward(self, x: Any) -> OrderedDict:
            x = self.stem(x)
            feats = OrderedDict()
            for i, stage in enumerate(self.stages):
                x = stage(x)
                feats[str(i)] = x
            return feats

    return SmallResNet()


def _resnet50_backbone(weights: str | Path | None) -> Any:
    """torchvision ResNet-50 (frozen batch norm) cut after layer3; `weights`: a local state-dict file or None."""
    import torch
    from torch import nn
    from torchvision.models import resnet50
    from torchvision.models.feature_extraction import create_feature_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    net = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise GeneratorError("spatial_backbone_weights: file not found", path)
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                sd = load_file(str(path))
            else:
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
            sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
            result = net.load_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")}, strict=False)
            missing = [k for k in result.missing_keys if not k.startswith("fc.")]  # the classifier is not used
            if missing or result.unexpected_keys:
                raise ValueError(
                    f"{len(missing)} missing keys (e.g. {missing[:1]}), unexpected {result.unexpected_keys[:1]}"
                )
        except Exception as exc:  # noqa: BLE001  (torch.load / load_state_dict raise several kinds)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GeneratorError(
                f"spatial_backbone_weights is not a torchvision ResNet-50 state dict: {first}", path
            ) from None
    body = create_feature_extractor(net, {"layer1": "0", "layer2": "1", "layer3": "2"})

    class ResNet50Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = body
            self.channels = [256, 512, 1024]

        def forward(self, x: Any) -> OrderedDict:
            return OrderedDict(self.body(x.repeat(1, 3, 1, 1) * 2.0 - 1.0))

    return ResNet50Features()


def build_spatial_encoder(
    num_tokens: int,
    dim: int,
    token_scale: float = 1.0,
    backbone: str = "small",
    weights: str | Path | None = None,
    width: int = 16,
) -> Any:
    """A torch module: mask (B, 1, H, W) in [0, 1] -> (B, num_tokens, dim). `backbone`: small | resnet50."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torchvision.ops import FeaturePyramidNetwork

    if num_tokens < 1 or dim < 1:
        raise GeneratorError(f"spatial encoder needs num_tokens >= 1 and dim >= 1, got {num_tokens}, {dim}")
    if backbone not in ("small", "resnet50"):
        raise GeneratorError(f"unknown spatial backbone '{backbone}' (small or resnet50)")
    body = _small_backbone(width) if backbone == "small" else _resnet50_backbone(weights)
    fpn_channels = 2 * width

    class SpatialEncoder(nn.Module):
        """Backbone -> FPN -> finest level pooled to GRID x GRID -> n tokens."""

        def __init__(self) -> None:
            super().__init__()
            self.num_tokens, self.dim, self.width, self.backbone = num_tokens, dim, width, backbone
            self.body = body
            self.fpn = FeaturePyramidNetwork(body.channels, fpn_channels)
            self.proj = nn.Linear(fpn_channels * GRID * GRID, num_tokens * dim)
            self.norm = nn.LayerNorm(dim)
            nn.init.normal_(self.proj.weight, std=0.02)
            nn.init.zeros_(self.proj.bias)
            nn.init.constant_(self.norm.weight, float(token_scale))

        def forward(self, mask: torch.Tensor) -> torch.Tensor:
            x = F.interpolate(mask.float(), size=(INPUT, INPUT), mode="area")
            finest = next(iter(self.fpn(self.body(x)).values()))
            h = F.adaptive_avg_pool2d(finest, GRID).flatten(1)
            return self.norm(self.proj(h).view(mask.shape[0], self.num_tokens, self.dim))

    return SpatialEncoder()


def save_spatial_encoder(encoder: Any, path: Path) -> Path:
    from safetensors.torch import save_file

    sd = {k: v.detach().float().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = {
        "format": FORMAT,
        "num_tokens": str(encoder.num_tokens),
        "dim": str(encoder.dim),
        "width": str(encoder.width),
        "backbone": encoder.backbone,
    }
    save_file(sd, str(path), metadata=meta)
    return path


def load_spatial_encoder(path: Path, dim: int) -> Any:
    """Rebuild an encoder saved by `save_spatial_encoder` (no backbone file needed: its weights are saved)."""
    from anoaug.generators.diffusion.sd.artifact import read_weights

    meta, sd = read_weights(path, FORMAT, "spatial encoder weights", "anoaug anomalydiffusion spatial-encoder")
    if int(meta["dim"]) != dim:
        raise GeneratorError(
            f"spatial encoder was trained for token dim {meta['dim']}, the text encoder has {dim}", path
        )
    enc = build_spatial_encoder(int(meta["num_tokens"]), dim, backbone=meta["backbone"], width=int(meta["width"]))
    try:
        enc.load_state_dict(sd)
    except RuntimeError as exc:
        raise GeneratorError(f"spatial encoder weights do not fit: {str(exc).splitlines()[0]}", path) from None
    enc.requires_grad_(False)
    return enc.eval()
