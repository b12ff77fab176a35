"""Per-connection flood control for client messages: a token bucket per connection.

The buckets live in the function's memory, not in the table: a message that is
refused costs no DynamoDB request, and an admitted one costs nothing extra. The
price is that the limit holds per execution environment: a connection whose
messages land on several environments of one function gets at most that many
times the rate (and the stage's throttling bounds the whole API). docs/security.md
says so.

A refused message is dropped. The client is told with a ``rate_limited`` error at
most once per ``TELL_EVERY_S``, so a flood does not become a flood of answers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

TELL_EVERY_S = 1.0
FORGET_AFTER_S = 300.0  # a connection that said nothing for this long starts afresh
_SWEEP_EVERY = 1000  # admissions between sweeps of forgotten connections


class Admission(Enum):
    ADMIT = "admit"
    REFUSE_AND_TELL = "refuse_and_tell"  # answer rate_limited, drop the message
    REFUSE = "refuse"  # drop it silently: told less than TELL_EVERY_S ago


@dataclass
class _Bucket:
    tokens: float
    stamp: float  # when tokens was computed
    told: float = float("-inf")  # when the client was last told it is limited


class ConnectionRateLimiter:
    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_per_second
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._admissions = 0

    def admit(self, connection_id: str) -> Admission:
        now = self._clock()
        self._admissions += 1
        if self._admissions % _SWEEP_EVERY == 0:
            self._sweep(now)
        bucket = self._buckets.get(connection_id)
        if bucket is None:
            bucket = self._buckets[connection_id] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return Admission.ADMIT
        if now - bucket.told >= TELL_EVERY_S:
            bucket.told = now
            return Admission.REFUSE_AND_TELL
        return Admission.REFUSE

    def _sweep(self, now: float) -> None:
        self._buckets = {
            key: bucket
            for key, bucket in self._buckets.items()
            if now - bucket.stamp < FORGET_AFTER_S
        }
