"""A small U-Net that maps an image to a per-pixel anomaly logit map (the nn only, no training)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from anomalib.data import InferenceBatch
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegmenterModel(nn.Module):
    """U-Net encoder/decoder with skip connections; widths e.g. (16, 32, 64).

    In training mode ``forward`` returns the (B, 1, H, W) logits; in eval mode an anomalib
    ``InferenceBatch`` whose ``anomaly_map`` is the sigmoid map and ``pred_score`` the maximum of
    the map after ``score_pool``-sized average pooling (DRAEM's image score), so a single hot pixel
    does not decide the image score.

    The 1x1 head starts with near-zero weights and the bias ``logit(prior)`` (the focal-loss prior of
    Lin et al., 2017), so every seed starts from the same, nearly all-background output. With PyTorch's
    default init the head bias is uniform in +-0.25 and the start is p ~ 0.4-0.6 on every pixel; with
    defects covering < 1 % of the pixels, a short CPU schedule then spends its steps pulling the
    background down and, depending on the seed, never learns to localise (see tests/test_eval_segmenter.py).
    """

    def __init__(
        self, widths: tuple[int, ...] | list[int] = (16, 32, 64), score_pool: int = 9, prior: float = 0.01
    ) -> None:
        super().__init__()
        if not 0.0 < prior < 1.0:
            raise ValueError("prior must be in (0, 1)")
        widths = list(widths)
        if len(widths) < 2:
            raise ValueError("the segmenter needs at least two widths")
        self.score_pool = score_pool
        self.down = nn.ModuleList()
        cin = 3
        for w in widths:
            self.down.append(_block(cin, w))
            cin = w
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for w_skip, w_in in zip(reversed(widths[:-1]), reversed(widths[1:]), strict=True):
            self.up.append(nn.ConvTranspose2d(w_in, w_skip, 2, stride=2))
            self.fuse.append(_block(2 * w_skip, w_skip))
        self.head = nn.Conv2d(widths[0], 1, 1)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.constant_(self.head.bias, -math.log((1 - prior) / prior))

    @property
    def stride(self) -> int:
        return 2 ** (len(self.down) - 1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.stride
        pad_h, pad_w = (-h) % s, (-w) % s
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        x = x.contiguous(memory_format=torch.channels_last)  # channels_last: faster oneDNN convolutions on CPU
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, reversed(skips[:-1]), strict=True):
            x = fuse(torch.cat([up(x), skip], dim=1))
        return self.head(x)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor | InferenceBatch:
        logits = self.logits(x)
        if self.training:
            return logits
        amap = torch.sigmoid(logits)
        k = min(self.score_pool, amap.shape[-1], amap.shape[-2])
        pooled = F.avg_pool2d(amap, k, stride=1, padding=k // 2, count_include_pad=False)
        score = pooled.flatten(1).amax(dim=1)
        return InferenceBatch(pred_score=score, anomaly_map=amap[:, 0])
