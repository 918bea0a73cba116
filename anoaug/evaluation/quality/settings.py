"""Settings of the generation-quality stage (the spec's ``quality`` section)."""

from __future__ import annotations

from pydantic import Field

from anoaug.registry import Settings

WEIGHTS_ENV = "ANOAUG_WEIGHTS"


class QualitySettings(Settings):
    """What the quality stage reads and how it measures."""

    weights_dir: str | None = Field(
        None,
        description=f"Local folder with feature-network weights for KID/IS/IC-LPIPS (default: ${WEIGHTS_ENV}); "
        "never downloaded. Without it those figures are not computed.",
    )
    crop_size: int = Field(64, ge=16, description="Side of the defect crops (mask bounding box, padded, resized).")
    context: float = Field(1.5, ge=1.0, description="Crop side = context x the mask's bounding-box side.")
    max_generated: int = Field(400, ge=2, description="Generated samples read per producer (first in shard order).")
    cluster_cap: int = Field(
        50, ge=2, description="Members per nearest-training-defect cluster used for diversity / IC-LPIPS pairs."
    )
    subsets: int = Field(20, ge=1, description="Random equal-size subsets averaged by the kernel distances.")
    change_threshold: float = Field(
        12.0, ge=0, description="A pixel counts as changed when a channel differs from the source normal by more."
    )
    network_batch: int = Field(16, ge=1, description="Images per feature-network forward pass.")
