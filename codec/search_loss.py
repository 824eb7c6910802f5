"""The loss a latent search minimises (``codec/latent_search.py``), importable
without torch: job drivers check an encode job's ``latent_loss`` before any
worker loads a model."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SearchLoss:
    """The loss searched: ``lmbda * 255^2 * MSE + lpips_weight * LPIPS-Alex + bpp``
    (the training loss of ``semarc train-codec``)."""

    lmbda: float
    lpips_weight: float = 0.0

    def __post_init__(self) -> None:
        if not (self.lmbda > 0 and math.isfinite(self.lmbda)) or not (
                self.lpips_weight >= 0 and math.isfinite(self.lpips_weight)):
            raise ValueError(f"a search loss needs lambda > 0 and an LPIPS weight >= 0, got {self}")

    @classmethod
    def parse(cls, text: str) -> "SearchLoss":
        """``LAMBDA`` or ``LAMBDA,LPIPS_WEIGHT`` (the command line's spelling)."""
        parts = [p.strip() for p in str(text).split(",")]
        if not 1 <= len(parts) <= 2:
            raise ValueError(f"expected LAMBDA or LAMBDA,LPIPS_WEIGHT, got {text!r}")
        return cls(float(parts[0]), float(parts[1]) if len(parts) == 2 else 0.0)
