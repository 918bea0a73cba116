"""KID, IS and IC-LPIPS with pretrained feature networks read ONLY from a local folder (never downloaded).

The folder is the spec's ``quality.weights_dir`` or ``$ANOAUG_WEIGHTS`` and may hold:

* ``inception_v3*.pth``: torchvision's ImageNet Inception-v3 state dict (the torch-hub file
  ``inception_v3_google-0cc3c7bd.pth``), for KID (2048-d pool features) and IS (class logits).
* ``alexnet*.pth`` or ``vgg16*.pth``: torchvision's ImageNet AlexNet / VGG-16 state dict (only its
  ``features.*`` tensors are read), the LPIPS backbone; LPIPS' linear layers are the ones torchmetrics ships.
* ``stand_in.json``: marks random stand-in weights (tests); every figure from them is labelled meaningless.

The metrics are torchmetrics' (``KernelInceptionDistance``, ``InceptionScore`` with the loaded network as
their feature extractor, and its LPIPS module). torchvision's Inception is not the TF-FID Inception of
torch-fidelity, so KID/IS here are comparable between arms of anoaug, not digit for digit with papers.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anoaug.evaluation.quality.diversity import cluster_diversity
from anoaug.evaluation.quality.settings import WEIGHTS_ENV

STAND_IN_MARKER = "stand_in.json"
INCEPTION_GLOB = "inception_v3*.pth"
LPIPS_GLOBS = (("alex", "alexnet*.pth"), ("vgg", "vgg16*.pth"))
INCEPTION_SIZE = 299
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Networks:
    """The feature networks found in a weights folder, and why any is missing."""

    weights_dir: Path | None
    inception: nn.Module | None = None
    lpips: nn.Module | None = None
    files: dict[str, str] = field(default_factory=dict)  # role -> file name
    meaningless: bool = False
    reason: str | None = None


def weights_dir_for(setting: str | None) -> Path | None:
    """The weights folder: the spec setting, else ``$ANOAUG_WEIGHTS``, else None."""
    value = setting or os.environ.get(WEIGHTS_ENV)
    return Path(value).expanduser().resolve() if value else None


class InceptionFeatures(nn.Module):
    """torchvision Inception-v3 on [0, 1] images of any size: 2048-d pool features or the class logits."""

    def __init__(self, net: nn.Module, output: str) -> None:
        super().__init__()
        self.net = net.eval()
        self.output = output
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x.float(), size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear")
        x = (x - self.mean) / self.std
        if self.output == "logits":
            return self.net(x)
        pooled: list[torch.Tensor] = []
        handle = self.net.avgpool.register_forward_hook(lambda m, i, o: pooled.append(o))
        try:
            self.net(x)
        finally:
            handle.remove()
        return torch.flatten(pooled[0], 1)


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_inception(path: Path) -> nn.Module:
    """torchvision's Inception-v3 (ImageNet input transform on, as its pretrained weights expect) from a state
    dict; the auxiliary classifier's tensors are optional."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    sd = {k: v for k, v in _state_dict(path).items() if not k.startswith("AuxLogits.")}
    net.load_state_dict(sd, strict=True)
    return net.eval()


def load_lpips(path: Path, net_type: str) -> nn.Module:
    """torchmetrics' LPIPS module with its shipped linear layers and the backbone's ``features.*`` from
    ``path``. torchmetrics' public LPIPS class always fetches the backbone from the internet, so its module
    is built with a random backbone (``pnet_rand``) and the local tensors are loaded into it."""
    from torchmetrics.functional.image.lpips import _LPIPS

    lp = _LPIPS(pretrained=True, net=net_type, pnet_rand=True)
    feats = {k[len("features.") :]: v for k, v in _state_dict(path).items() if k.startswith("features.")}
    target = {}
    for slice_name, block in lp.net.named_children():
        for key in block.state_dict():
            target[f"{slice_name}.{key}"] = feats[key]  # a slice names its layers by their index in features
    lp.net.load_state_dict(target, strict=True)
    return lp.eval()


def load_networks(weights_dir: Path | None) -> Networks:
    """Every network the folder holds; a missing folder or file leaves that network None with the reason."""
    if weights_dir is None:
        return Networks(None, reason=f"no weights folder (set ${WEIGHTS_ENV} or the spec's quality.weights_dir)")
    if not weights_dir.is_dir():
        return Networks(weights_dir, reason=f"weights folder {weights_dir} does not exist")
    nets = Networks(weights_dir, meaningless=(weights_dir / STAND_IN_MARKER).is_file())
    missing = []
    found = sorted(weights_dir.glob(INCEPTION_GLOB))
    if found:
        nets.inception, nets.files["inception"] = load_inception(found[0]), found[0].name
    else:
        missing.append(f"no {INCEPTION_GLOB} (KID, IS)")
    for net_type, pattern in LPIPS_GLOBS:
        found = sorted(weights_dir.glob(pattern))
        if found:
            nets.lpips, nets.files["lpips"] = load_lpips(found[0], net_type), found[0].name
            break
    else:
        missing.append("no alexnet*.pth / vgg16*.pth (IC-LPIPS)")
    if missing:
        nets.reason = f"in {weights_dir}: " + "; ".join(missing)
    return nets


def _tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0


def kid(
    inception: nn.Module, real: np.ndarray, generated: np.ndarray, subsets: int, batch: int, seed: int
) -> tuple[float, float] | None:
    """(mean, std) KID of uint8 crops over random equal-size subsets; None with fewer than two on a side."""
    from torchmetrics.image.kid import KernelInceptionDistance

    m = min(len(real), len(generated))
    if m < 2:
        return None
    with warnings.catch_warnings():  # "will save all extracted features in buffer": a few hundred crops here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=InceptionFeatures(inception, "pool"), subsets=subsets, subset_size=m)
    with torch.no_grad():
        for crops, is_real in ((real, True), (generated, False)):
            for s in range(0, len(crops), batch):
                metric.update(_tensor(crops[s : s + batch]), real=is_real)
        torch.manual_seed(seed)  # the subsets
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(inception: nn.Module, generated: np.ndarray, batch: int, seed: int) -> tuple[float, float] | None:
    """(mean, std) Inception Score of uint8 crops over up to 10 splits; None with fewer than two crops."""
    from torchmetrics.image.inception import InceptionScore

    if len(generated) < 2:
        return None
    with warnings.catch_warnings():  # as in `kid`
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=InceptionFeatures(inception, "logits"), splits=min(10, len(generated) // 2))
    with torch.no_grad():
        for s in range(0, len(generated), batch):
            metric.update(_tensor(generated[s : s + batch]))
        torch.manual_seed(seed)  # the split order
        mean, std = metric.compute()
    return float(mean), float(std)


def lpips_distance(lpips: nn.Module, batch: int) -> Any:
    """A pairwise LPIPS distance over uint8 crops, (A, ...) x (B, ...) -> (A, B), for `cluster_diversity`."""

    def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ta, tb = _tensor(a), _tensor(b)
        out = np.zeros((len(a), len(b)))
        with torch.no_grad():
            for i in range(len(a)):
                for s in range(0, len(b), batch):
                    y = tb[s : s + batch]
                    out[i, s : s + len(y)] = lpips(ta[i : i + 1].expand(len(y), -1, -1, -1), y, normalize=True).view(-1)
        return out

    return distance


def ic_lpips(
    lpips: nn.Module, generated: np.ndarray, training: np.ndarray, cap: int, batch: int, rng: np.random.Generator
) -> float | None:
    """IC-LPIPS: each generated crop joins its nearest (by LPIPS) generator-training crop's cluster; mean
    pairwise LPIPS inside clusters (at most ``cap`` members each), averaged over clusters."""
    if len(training) == 0 or len(generated) < 2:
        return None
    dist = lpips_distance(lpips, batch)
    assignment = dist(generated, training).argmin(1)
    value, _ = cluster_diversity(generated, assignment, dist, rng, cap)
    return value


def save_stand_in_weights(folder: Path, seed: int = 0) -> Path:
    """Random Inception-v3 and AlexNet-features state dicts in the formats `load_networks` reads, plus the
    stand-in marker (for tests: figures from them are meaningless). Returns ``folder``."""
    from torchvision.models import alexnet, inception_v3

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    inc = inception_v3(weights=None, aux_logits=False, init_weights=False)
    half = {k: v.half() if v.is_floating_point() else v for k, v in inc.state_dict().items()}  # half the bytes
    torch.save(half, folder / "inception_v3_stand_in.pth")
    alex = alexnet(weights=None)
    torch.save({f"features.{k}": v for k, v in alex.features.state_dict().items()}, folder / "alexnet_stand_in.pth")
    (folder / STAND_IN_MARKER).write_text(json.dumps({"stand_in": True, "seed": seed}))
    return folder


def weights_listing(weights_dir: Path | None) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of the files the loaders would read: what a cache key must notice."""
    if weights_dir is None or not weights_dir.is_dir():
        return []
    patterns = (INCEPTION_GLOB, *(g for _, g in LPIPS_GLOBS), STAND_IN_MARKER)
    files = sorted({p for pattern in patterns for p in weights_dir.glob(pattern)})
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
