"""The VAE phase of `anoaug pretrain` alone: held-out PSNR along its steps, for comparing VAE settings.

    python benchmarks/bench_vae.py [--steps N] [--every K] [--demo-root ROOT] [--param KEY=VALUE ...]

Runs the pretraining's own VAE phase (`BaseModelTrainer.vae_step`: the same seed, crops, loss, schedule and
EMA as `anoaug pretrain` with the same settings and ``vae_steps`` = ``--steps``) on the normal training images
of demo/cap and demo/fabric, and every ``--every`` steps prints the PSNR of the held-out normal crops (the
model card's ``vae_psnr_db``, overall and per category) for the last weights and for their EMA (the exported
VAE). The PSNR at step N is the card's figure of a pretrain with
``vae_steps=N``: the UNet phase does not touch the VAE. Compare variants at equal steps, not seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1900, help="VAE steps (the planned vae_steps)")
    ap.add_argument("--every", type=int, default=250, help="measure every K steps (and at the end)")
    ap.add_argument("--demo-root", type=Path, default=Path("/tmp/anoaug-bench-demo"))
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--param", action="append", default=[], help="pretrain setting KEY=VALUE (YAML value)")
    args = ap.parse_args()

    import torch

    from anoaug.data.demo import make_demo_dataset
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators.diffusion.pretrain import PretrainSettings
    from anoaug.generators.diffusion.pretrain import text as text_mod
    from anoaug.generators.diffusion.pretrain.data import collect_normals
    from anoaug.generators.diffusion.pretrain.trainer import BaseModelTrainer
    from anoaug.pipeline.config import parse_sets
    from anoaug.registry import validate_settings

    torch.set_num_threads(args.threads)
    if not all((args.demo_root / c).is_dir() for c in ("cap", "fabric")):
        make_demo_dataset(args.demo_root, seed=0)
    given = {**parse_sets(args.param), "vae_steps": args.steps}
    s = validate_settings(PretrainSettings, given, "pretrain")
    sources = []
    for name in ("cap", "fabric"):
        data = read_category(args.demo_root, name)
        sources.append((data, make_split(data, seed=0)))
    normals = collect_normals(sources, s.holdout_fraction, s.seed, s.max_image_side)
    words = text_mod.vocabulary(["cap", "fabric"], sorted({t for _, sp in sources for t in sp.defect_types()}),
                                s.reserved_tokens)  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        trainer = BaseModelTrainer(s, normals, words, Path(work))
    print(
        json.dumps({"settings": parse_sets(args.param), "steps": args.steps, "init_db": round(trainer.vae_psnr(), 2)})
    )
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        trainer.vae_step()
        if step % args.every and step != args.steps:
            continue
        row = {"step": step, "last_db": round(trainer.vae_psnr(), 2), "last": trainer.vae_psnr(per_category=True)}
        if trainer.vae_ema is not None:
            trainer.vae_ema.store(trainer.vae.parameters())
            trainer.vae_ema.copy_to(trainer.vae.parameters())
            row |= {"ema_db": round(trainer.vae_psnr(), 2), "ema": trainer.vae_psnr(per_category=True)}
            trainer.vae_ema.restore(trainer.vae.parameters())
        for key in ("last", "ema"):
            if key in row:
                row[key] = {c: round(v, 2) for c, v in row[key].items()}
        print(json.dumps(row | {"seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
