"""Bulk generation into resumable WebDataset shards, their manifests, and readers (see format.py)."""

from anoaug.shards.generate import GenerationSummary, ShardError, generate_category
from anoaug.shards.manifest import verify_generation
from anoaug.shards.reader import ShardSample, iter_samples

__all__ = [
    "GenerationSummary",
    "ShardError",
    "ShardSample",
    "generate_category",
    "iter_samples",
    "verify_generation",
]
