"""Anomaly tokens (k learned vectors per defect type) and spatial tokens spliced at the prompt's placeholder.

A prompt template holds one placeholder (``<scratch>``); it is expanded into the type's k anomaly tokens
(``<scratch_0> ... <scratch_3>``, new tokenizer entries whose embedding rows are learned by masked textual
inversion) followed by the n shared spatial tokens (``<spatial_0> ...``). The spatial tokens' rows are
never used: a forward hook on the text encoder's input embedding replaces them with the mask encoder's
vectors, so the spatial embedding sits right after the anomaly embedding at the placeholder position (the
sequence keeps its length and end-of-text position). The anomaly rows are trained with the `sd` textual
inversion helpers (`TokenBank`: only those rows get gradients; every other row is restored bit-exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anoaug.generators.base import GeneratorError
from anoaug.generators.diffusion.sd import conditioning as cond
from anoaug.generators.diffusion.sd.textual_inversion import TokenBank, placeholder_for, type_slug

if TYPE_CHECKING:
    import torch

FORMAT = "anoaug-anomaly-tokens"


def anomaly_token_names(defect_type: str, k: int) -> list[str]:
    """The k token strings of a defect type (``_`` never occurs in a type slug, so they cannot clash)."""
    return [f"<{type_slug(defect_type)}_{i}>" for i in range(k)]


def spatial_token_names(n: int) -> list[str]:
    return [f"<spatial_{j}>" for j in range(n)]


@dataclass
class AnomalyVocab:
    """The tokens one fitted generator added: k per defect type and n shared spatial slots."""

    k: int
    n: int
    tokens: dict[str, list[str]]  # defect type -> its k anomaly tokens
    ids: dict[str, list[int]]  # defect type -> their ids
    spatial_ids: list[int]
    bank: TokenBank  # the anomaly rows, as the textual-inversion helpers expect them

    def expand(self, prompt: str, defect_type: str) -> str:
        """`prompt` with the type's placeholder replaced by its anomaly tokens and the spatial tokens."""
        placeholder = placeholder_for(defect_type)
        if prompt.count(placeholder) != 1:
            raise GeneratorError(f"prompt must hold the placeholder {placeholder} exactly once: '{prompt}'")
        if defect_type not in self.tokens:
            raise GeneratorError(
                f"no learned tokens for defect type '{defect_type}'; trained types: {', '.join(sorted(self.tokens))}"
            )
        words = self.tokens[defect_type] + spatial_token_names(self.n)
        return prompt.replace(placeholder, " ".join(words))

    def prompt(self, template: str, category: str, defect_type: str) -> str:
        """The expanded prompt of `template` (which must hold ``<{type}>``) for one defect type."""
        return self.expand(cond.build_prompt(template, category, defect_type, learned_token=True), defect_type)

    def slots(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(placeholder columns (B, L) bool: anomaly + spatial tokens, spatial positions (B, n) or None)."""
        import torch

        anomaly = torch.tensor(sorted(i for v in self.ids.values() for i in v), device=ids.device)
        columns = torch.isin(ids, anomaly)
        if self.n == 0:
            return columns, None
        rows = []
        for b in range(ids.shape[0]):
            pos = []
            for sid in self.spatial_ids:
                hit = (ids[b] == sid).nonzero().flatten()
                if hit.numel() != 1:
                    raise GeneratorError(
                        f"prompt {b} holds spatial token id {sid} {hit.numel()} times (expected once; "
                        "a prompt over the tokenizer's length is cut)"
                    )
                pos.append(int(hit[0]))
            rows.append(pos)
        positions = torch.tensor(rows, device=ids.device, dtype=torch.long)
        columns[torch.arange(ids.shape[0], device=ids.device)[:, None], positions] = True
        return columns, positions


def add_tokens(
    tokenizer: Any, text_encoder: Any, defect_types: list[str], k: int, n: int, init_word: str
) -> AnomalyVocab:
    """Add k anomaly tokens per type and n spatial tokens; new rows start from `init_word`'s embedding."""
    import torch

    if k < 1:
        raise GeneratorError(f"anomaly_tokens must be >= 1, got {k}")
    tokens = {t: anomaly_token_names(t, k) for t in defect_types}
    spatial = spatial_token_names(n)
    new = [tok for toks in tokens.values() for tok in toks] + spatial
    clash = [tok for tok in new if tok in tokenizer.get_vocab()]
    if clash or len(set(new)) != len(new):
        raise GeneratorError(f"token names clash with the vocabulary or each other: {clash or new}")
    tokenizer.add_tokens(new)
    ids = {t: [int(tokenizer.convert_tokens_to_ids(tok)) for tok in toks] for t, toks in tokens.items()}
    spatial_ids = [int(tokenizer.convert_tokens_to_ids(tok)) for tok in spatial]
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # rows set below
    weight = text_encoder.get_input_embeddings().weight
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    first_new = min([*spatial_ids, *(i for v in ids.values() for i in v)])
    with torch.no_grad():
        init = weight[init_ids].mean(0) if init_ids else weight[:first_new].mean(0)
        for i in [*spatial_ids, *(i for v in ids.values() for i in v)]:
            weight[i] = init
    bank = TokenBank(
        tokens={f"{t}#{j}": tok for t, toks in tokens.items() for j, tok in enumerate(toks)},
        ids={f"{t}#{j}": i for t, v in ids.items() for j, i in enumerate(v)},
    )
    return AnomalyVocab(k=k, n=n, tokens=tokens, ids=ids, spatial_ids=spatial_ids, bank=bank)


def encode(
    text_encoder: Any, ids: torch.Tensor, positions: torch.Tensor | None, vectors: torch.Tensor | None
) -> torch.Tensor:
    """Text-encoder states of `ids` with the input embeddings at `positions` (B, n) replaced by `vectors` (B, n, D)."""
    import torch

    if positions is None or vectors is None:
        return cond.encode_text(text_encoder, ids)
    rows = torch.arange(ids.shape[0], device=ids.device)[:, None].expand_as(positions)

    def splice(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[rows, positions] = vectors.to(out.dtype)
        return out

    handle = text_encoder.get_input_embeddings().register_forward_hook(splice)
    try:
        return cond.encode_text(text_encoder, ids)
    finally:
        handle.remove()


def save(text_encoder: Any, vocab: AnomalyVocab, path: Path) -> Path:
    """Write each type's (k, D) anomaly vectors (fp32 safetensors) with the vocabulary in the metadata."""
    from safetensors.torch import save_file

    weight = text_encoder.get_input_embeddings().weight.detach().float().cpu()
    tensors = {t: weight[ids].clone().contiguous() for t, ids in vocab.ids.items()}
    meta = {"format": FORMAT, "k": str(vocab.k), "n": str(vocab.n)}
    save_file(tensors, str(path), metadata=meta)
    return path


def load(tokenizer: Any, text_encoder: Any, path: Path, init_word: str = "defect") -> AnomalyVocab:
    """Add the tokens saved by `save` to a fresh tokenizer / text encoder and set the anomaly rows."""
    import torch

    from anoaug.generators.diffusion.sd.artifact import read_weights

    meta, tensors = read_weights(path, FORMAT, "anomaly tokens", "anoaug anomaly-token")
    k, n = int(meta["k"]), int(meta["n"])
    dim = text_encoder.get_input_embeddings().weight.shape[1]
    for t, vec in tensors.items():
        if tuple(vec.shape) != (k, dim):
            raise GeneratorError(f"tokens of '{t}' have shape {tuple(vec.shape)}, expected ({k}, {dim})", path)
    vocab = add_tokens(tokenizer, text_encoder, sorted(tensors), k, n, init_word)
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for t, ids in vocab.ids.items():
            weight[ids] = tensors[t].to(weight.dtype)
    return vocab
