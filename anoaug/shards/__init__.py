"""Bulk generation into resumable WebDataset shards, their manifests, and readers (see format.py)."""

from anoaug.shards.generate import GenerationSummary, ShardError, generate_category
from anoaug.shards.manifest import verify_generation
from anoaug.shards.reader import ShardSample, export_mvtec_folder, iter_samples

__all__ = [
    "GenerationSummary",
    "ShardError",
    "ShardSample",
    "export_mvtec_folder",
    "generate_category",
    "iter_samples",
    "verify_generation",
]
