"""Textual inversion: one new token per defect type whose embedding row is the only thing learned.

The tokenizer gets placeholder tokens (``<scratch>``), the text encoder's input embedding matrix is
resized, and new rows start from the embedding of an initializer word. Training leaves every other
row bit-identical: a gradient hook zeroes their gradient (so Adam's moments stay zero and its update
is exactly zero) and `restore_frozen_rows` copies them back after each step as a guarantee (weight
decay or numerical noise can never leak into the base vocabulary). diffusers' `load_textual_inversion`
only loads embeddings; the training-time masking is written here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anoaug.generators.base import GeneratorError


def type_slug(defect_type: str) -> str:
    """A token-safe, lower-case name for a defect type ('Broken Large' -> 'broken-large')."""
    slug = re.sub(r"[^a-z0-9]+", "-", defect_type.lower()).strip("-")
    return slug or "defect"


def placeholder_for(defect_type: str) -> str:
    return f"<{type_slug(defect_type)}>"


@dataclass
class TokenBank:
    """Placeholder tokens added to a tokenizer / text encoder, and the rows they own."""

    tokens: dict[str, str]  # defect type -> placeholder token
    ids: dict[str, int]  # defect type -> token id
    original_rows: Any = None  # torch.Tensor copy of the frozen rows' values (None once loaded for inference)
    hooks: list[Any] = field(default_factory=list)

    @property
    def new_ids(self) -> list[int]:
        return sorted(self.ids.values())


def _embeddings(text_encoder: Any) -> Any:
    return text_encoder.get_input_embeddings()


def add_placeholder_tokens(
    tokenizer: Any, text_encoder: Any, defect_types: list[str], init_word: str = "defect"
) -> TokenBank:
    """Add one placeholder token per defect type, resize the embeddings, new rows = `init_word`."""
    import torch

    tokens = {t: placeholder_for(t) for t in defect_types}
    clash = [tok for tok in tokens.values() if tok in tokenizer.get_vocab()]
    if clash:
        raise GeneratorError(f"placeholder tokens already in the tokenizer's vocabulary: {clash}")
    if len(set(tokens.values())) != len(tokens):
        raise GeneratorError(f"defect types map to the same placeholder token: {tokens}")
    tokenizer.add_tokens(list(tokens.values()))
    ids = {t: int(tokenizer.convert_tokens_to_ids(tok)) for t, tok in tokens.items()}
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set below
    weight = _embeddings(text_encoder).weight
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    with torch.no_grad():
        init = weight[init_ids].mean(0) if init_ids else weight[: min(ids.values())].mean(0)
        for i in ids.values():
            weight[i] = init
    return TokenBank(tokens=tokens, ids=ids)


def make_trainable(text_encoder: Any, bank: TokenBank) -> Any:
    """Make only the new rows of the input embedding trainable; return the embedding weight parameter."""
    import torch

    text_encoder.requires_grad_(False)
    weight = _embeddings(text_encoder).weight
    weight.requires_grad_(True)
    keep = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    keep[bank.new_ids] = 1.0
    bank.original_rows = weight.detach().clone()
    bank.hooks.append(weight.register_hook(lambda g: g * keep.to(g.dtype)))
    return weight


def restore_frozen_rows(text_encoder: Any, bank: TokenBank) -> None:
    """Copy the original values back into every row that is not a placeholder (exactness guarantee)."""
    import torch

    if bank.original_rows is None:
        return
    weight = _embeddings(text_encoder).weight
    new = torch.tensor(bank.new_ids, device=weight.device)
    with torch.no_grad():
        saved_new = weight[new].clone()
        weight.copy_(bank.original_rows.to(weight.dtype))
        weight[new] = saved_new


def finish_training(text_encoder: Any, bank: TokenBank) -> None:
    """Remove the gradient hooks, freeze the embedding again and drop the copy of the original rows."""
    restore_frozen_rows(text_encoder, bank)
    for h in bank.hooks:
        h.remove()
    bank.hooks.clear()
    bank.original_rows = None
    _embeddings(text_encoder).weight.requires_grad_(False)


def save_embeddings(text_encoder: Any, bank: TokenBank, path: Path) -> Path:
    """Write {placeholder token: embedding vector} (fp32, safetensors) to `path`."""
    from safetensors.torch import save_file

    weight = _embeddings(text_encoder).weight.detach().float().cpu()
    tensors = {bank.tokens[t]: weight[i].clone().contiguous() for t, i in bank.ids.items()}
    meta = {"format": "anoaug-textual-inversion", **{f"type:{t}": tok for t, tok in bank.tokens.items()}}
    save_file(tensors, str(path), metadata=meta)
    return path


def load_embeddings(tokenizer: Any, text_encoder: Any, path: Path) -> TokenBank:
    """Add the placeholder tokens saved by `save_embeddings` and set their rows; return the bank."""
    import torch

    from anoaug.generators.diffusion.sd.artifact import read_weights

    meta, tensors = read_weights(
        path, "anoaug-textual-inversion", "textual-inversion embeddings", "anoaug textual-inversion"
    )
    types = {k.removeprefix("type:"): v for k, v in meta.items() if k.startswith("type:")}
    dim = _embeddings(text_encoder).weight.shape[1]
    for tok, vec in tensors.items():
        if vec.ndim != 1 or vec.shape[0] != dim:
            raise GeneratorError(
                f"embedding for {tok} has shape {tuple(vec.shape)}, the text encoder expects ({dim},)", path
            )
    bank = add_placeholder_tokens(tokenizer, text_encoder, sorted(types))
    weight = _embeddings(text_encoder).weight
    with torch.no_grad():
        for t, i in bank.ids.items():
            weight[i] = tensors[types[t]].to(weight.dtype)
    return bank
