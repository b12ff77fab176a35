"""Full-jitter capped exponential backoff: ``delay = random() * min(cap, base * 2**n)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MAX_EXPONENT = 62  # 2**62 * any sane base is past any cap; keeps the float finite


@dataclass(frozen=True)
class Backoff:
    base_s: float
    cap_s: float
    random: Callable[[], float]

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (0 for the first retry)."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(max(attempt, 0), MAX_EXPONENT))
        return self.random() * ceiling
