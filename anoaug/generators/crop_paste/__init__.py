"""``crop-paste``: real defect crops from the generator-training defects, pasted at the synthesized location."""

from anoaug.generators.crop_paste.generator import CropPasteGenerator

__all__ = ["CropPasteGenerator"]
