"""Tiny random-weight stand-in for a Stable Diffusion 1.x/2.x model folder (diffusers layout).

No weights can be downloaded in tests, so the real loading / training / sampling code is exercised on a
model built from configs: a tiny UNet2DConditionModel, AutoencoderKL, CLIP text encoder, a CLIP BPE
tokenizer with a hand-written vocabulary, and a DDIM scheduler, saved with the pipeline's own
`save_pretrained` so that `StableDiffusionPipeline.from_pretrained(folder)` loads it too. The output
is noise; it is only for checking that code paths work end to end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

# Whole words get their own BPE token so prompts tokenize to a few ids (everything else falls back to bytes).
_WORDS = ("a", "photo", "of", "with", "defect", "scratch", "crack", "hole", "stain", "the", "on", "an")


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (the GPT-2 / CLIP byte mapping).

    Written out here because the tokenizer files must be produced without any downloaded vocabulary.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def _bpe_pieces(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The pieces byte-level BPE splits `word` into with merge `ranks` (lowest rank merged first)."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = zip(pieces[:-1], pieces[1:], strict=True)
        rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in enumerate(pairs))
        if rank == len(ranks):
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def write_tiny_clip_tokenizer_files(folder: Path, words: Sequence[str] = _WORDS) -> tuple[Path, Path]:
    """Write a tiny CLIP BPE `vocab.json` and `merges.txt` into `folder`; return their paths.

    Every one of `words` (lower-case letters) becomes one whole-word token; other text falls back to bytes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokens: list[str] = ["<|startoftext|>", "<|endoftext|>"]
    alphabet = _byte_alphabet()
    tokens += alphabet + [c + "</w>" for c in alphabet]
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        # Merge left to right ("p h", "ph o", ..., the last one producing the end-of-word token), reusing the
        # merges of earlier words: each new merge joins the first two pieces the merges so far leave, so it
        # ranks after them and never changes how an earlier word tokenizes.
        while len(pieces := _bpe_pieces(word, ranks)) > 1:
            ranks[(pieces[0], pieces[1])] = len(ranks)
            tokens.append(pieces[0] + pieces[1])
    merges = [f"{a} {b}" for a, b in ranks]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_path, merges_path


def make_tiny_stable_diffusion(folder: str | Path, inpainting: bool = False, seed: int = 0) -> Path:
    """Build a tiny random Stable Diffusion model and save it in the standard SD folder layout.

    Layout: ``model_index.json`` + ``unet/ vae/ text_encoder/ tokenizer/ scheduler/``. The UNet has
    9 input channels when `inpainting` (latents + mask + masked-image latents), else 4. The VAE
    downsamples by 4 (real SD: 8), so a 32 px image gives an 8x8 latent. Returns `folder`.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok_dir = folder / "tokenizer"
    write_tiny_clip_tokenizer_files(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)

    hidden = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=hidden,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=77,
                projection_dim=hidden,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=9 if inpainting else 4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=hidden,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
        )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe_cls = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipe = pipe_cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    # Keep the hand-written BPE files beside whatever the tokenizer serialised (tokenizer.json in v5).
    if not (tok_dir / "vocab.json").exists() or not (tok_dir / "merges.txt").exists():
        write_tiny_clip_tokenizer_files(tok_dir)
    return folder
