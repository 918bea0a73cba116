"""``cutpaste``: a patch of the same normal image, colour-jittered and pasted through the synthesized mask."""

from anoaug.generators.cutpaste.generator import CutPasteGenerator

__all__ = ["CutPasteGenerator"]
