"""Generation quality: how the generated defects themselves look, before any detector is trained on them.

Weight-free figures (always): fidelity (`fidelity.py`), diversity (`diversity.py`), mask alignment
(`alignment.py`) and memorisation (`memorisation.py`) on defect crops (`crops.py`, `features.py`).
Network figures (KID, IS, IC-LPIPS; `networks.py`) only with feature-network weights from a local folder.
`stage.py` computes them for one producer's shards and writes ``quality.json``.
"""

from anoaug.evaluation.quality.settings import QualitySettings

__all__ = ["QualitySettings"]
