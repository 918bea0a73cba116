"""What `anoaug pretrain` reaches on the demo categories (prints figures; not run by the tests).

    python benchmarks/bench_pretrain.py [--out DIR] [--demo-root ROOT] [--max-train-seconds S] [--param KEY=VALUE ...]

Pretrains (or resumes) a base model on the normal training images of demo/cap and demo/fabric with the
default settings (or the given ones) and prints from its model card: VAE PSNR on held-out normal crops,
overall and per category (goal >= 30 dB), the untrained VAE's PSNR, the UNet's held-out denoising loss
before/after, and training speed (UNet steps/s at the UNet batch size, 16 by default).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_PSNR_DB = 30.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/anoaug-bench-pretrain"))
    ap.add_argument("--demo-root", type=Path, default=Path("/tmp/anoaug-bench-demo"))
    ap.add_argument("--max-train-seconds", type=float, default=None, help="optional time cap")
    ap.add_argument("--param", action="append", default=[], help="pretrain setting KEY=VALUE (YAML value)")
    args = ap.parse_args()

    from anoaug.data.demo import make_demo_dataset
    from anoaug.data.formats import read_category
    from anoaug.data.split import make_split
    from anoaug.generators.diffusion.pretrain import PretrainSettings, pretrain_base, read_card
    from anoaug.pipeline.config import parse_sets
    from anoaug.registry import validate_settings

    if not all((args.demo_root / c).is_dir() for c in ("cap", "fabric")):
        make_demo_dataset(args.demo_root, seed=0)
    given = parse_sets(args.param)
    if args.max_train_seconds is not None:
        given["max_train_seconds"] = args.max_train_seconds
    settings = validate_settings(PretrainSettings, given, "pretrain")
    sources = []
    for name in ("cap", "fabric"):
        data = read_category(args.demo_root, name)
        sources.append((data, make_split(data, seed=0)))

    def progress(p) -> None:  # noqa: ANN001
        if p.step % 100 == 0:
            print(f"  {p.phase} step {p.step}  loss {p.loss:.4f}  {p.steps_per_s:.2f} steps/s  ETA {p.eta_s:.0f} s",
                  flush=True)  # fmt: skip

    card = read_card(pretrain_base(settings, sources, args.out, progress))
    psnr = card["vae_psnr_db"]
    kind, res, factor = card["unet_kind"], card["resolution"], card["vae_scale_factor"]
    print(f"model: {args.out} ({kind} UNet, {res} px, VAE factor {factor})")
    print(f"VAE PSNR on held-out normal crops: {psnr:.2f} dB (goal >= {GOAL_PSNR_DB:.0f}: "
          f"{'met' if psnr >= GOAL_PSNR_DB else 'NOT met'}); untrained {card['vae_psnr_init_db']:.2f} dB")  # fmt: skip
    for cat, value in card["vae_psnr_db_per_category"].items():
        print(f"  {cat}: {value:.2f} dB")
    loss = card["unet_heldout_loss"]
    print(f"UNet held-out denoising loss: {loss['init']:.4f} (init) -> {loss['final']:.4f}")
    sps, steps, secs = card["steps_per_s"], card["steps"], card["seconds"]
    batch = card["batch_size"]
    print(f"VAE: {steps['vae']} steps in {secs['vae']:.0f} s ({sps['vae']} steps/s at batch {batch['vae']})")
    print(f"UNet: {steps['unet']} steps in {secs['unet']:.0f} s ({sps['unet']} steps/s at batch {batch['unet']})")
    print(f"stopped by: {card['stopped_by']}; measured on {card['measured_on']}")


if __name__ == "__main__":
    main()
