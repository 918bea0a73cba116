"""``make_synthesizer``: the ``MaskSynthesizer`` of a spec's ``masks.source`` (bank or learned).

Kept apart from ``anoaug.masks.synthesis`` so that the learned source (which builds on the bank's types)
and the bank do not import each other.
"""

from __future__ import annotations

from anoaug.data.records import CategoryData
from anoaug.data.split import SplitManifest
from anoaug.masks.synthesis import MaskSynthesizer
from anoaug.spec import MasksSection


def make_synthesizer(
    data: CategoryData, split: SplitManifest, spec: MasksSection, kind: str, seed: int = 0
) -> MaskSynthesizer:
    """Real bank masks (``source: bank``) or learned masks (``source: learned``, learned / sampled with
    ``seed`` or read from the cache), placed inside the foreground by the same ``MaskSynthesizer``."""
    if spec.source == "learned":
        from anoaug.masks.learned.source import learned_source

        return MaskSynthesizer(learned_source(data, split, spec, seed), spec, kind)
    return MaskSynthesizer.from_split(data, split, spec, kind)
