"""The text side of a pretrained base model: a local CLIP tokenizer and a small CLIP text encoder.

No vocabulary can be downloaded, so the tokenizer is a byte-level CLIP BPE whose whole-word tokens are
the words the pipeline writes in prompts: the prompt templates, the category names, the defect-type
words (from the split manifests) and the `diffusion-sd` token template, plus ``reserved_tokens`` rare
letter-only words (``zqa``, ``zqb``, ...) that training never sees, kept for concepts learned later
(textual inversion may also add its own ``<type>`` tokens). Anything else still tokenizes, byte by byte.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anoaug.generators.diffusion.sd.conditioning import DEFAULT_TEMPLATE
from anoaug.generators.diffusion.sd.tiny_stand_in import write_tiny_clip_tokenizer_files

# Prompts of the normal images the base model learns from; {category} is the category name with spaces.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {category}",
    "a close up photo of a {category}",
    "a photo of the {category}",
    "an image of a {category}",
    "a good {category}",
    "a {category} without defect",
)
# Words of prompts the pipeline writes later (defect prompts, negative prompts), kept as whole tokens.
EXTRA_WORDS: tuple[str, ...] = ("defect", "defects", "defective", "with", "on", "normal", "damaged", "anomaly")
MAX_LENGTH = 77


def words_of(text: str) -> list[str]:
    """Lower-case letter runs of `text` (what CLIP's pre-tokenizer keeps together)."""
    return re.findall(r"[a-z]+", text.lower())


def reserved_words(n: int) -> list[str]:
    """`n` rare whole-word tokens: zqa, zqb, ..., zqz, zra, ..."""
    letters = string.ascii_lowercase
    return [f"z{letters[(16 + i // 26) % 26]}{letters[i % 26]}" for i in range(n)]


def vocabulary(categories: Iterable[str], defect_types: Iterable[str], reserved: int) -> list[str]:
    """Whole words of the tokenizer, in a fixed order (templates, categories, defect types, reserved)."""
    words: list[str] = []
    for text in (*TEMPLATES, DEFAULT_TEMPLATE, *EXTRA_WORDS):
        words += words_of(text.replace("{category}", " ").replace("{type}", " "))
    for name in sorted(categories):
        words += words_of(name.replace("_", " "))
    for name in sorted(defect_types):
        words += words_of(name.replace("_", " "))
    words += reserved_words(reserved)
    return list(dict.fromkeys(words))


def build_tokenizer(folder: Path, words: Sequence[str]) -> Any:
    """Write the BPE files for `words` into `folder` and load them as a `CLIPTokenizer`."""
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer_files(folder, words)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_LENGTH)


def build_text_encoder(tokenizer: Any, width: int, layers: int, heads: int) -> Any:
    """A randomly initialised `CLIPTextModel` for `tokenizer` (call under a seeded torch RNG)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=width,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def category_prompt(category: str, rng: np.random.Generator, drop_prob: float) -> str:
    """A random template filled with `category`, or "" with probability `drop_prob` (unconditional)."""
    if rng.random() < drop_prob:
        return ""
    return TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(category=category.replace("_", " "))
