"""Flood control for client messages: the token bucket per connection."""

from __future__ import annotations

from hatchway.rate_limit import Admission, ConnectionRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_admitted_then_the_rate_and_nothing_more() -> None:
    clock = Clock()
    limiter = ConnectionRateLimiter(rate_per_second=10, burst=20, clock=clock)
    admitted = [limiter.admit("c1") for _ in range(25)]
    assert admitted[:20] == [Admission.ADMIT] * 20
    # Told once, then dropped silently: a flood is not answered with a flood.
    assert admitted[20:] == [Admission.REFUSE_AND_TELL] + [Admission.REFUSE] * 4
    clock.now += 0.5  # five tokens back
    assert [limiter.admit("c1") for _ in range(6)] == [Admission.ADMIT] * 5 + [Admission.REFUSE]
    clock.now += 1.0  # ten more, and told again on the first refusal after a second
    assert [limiter.admit("c1") for _ in range(11)][-1] is Admission.REFUSE_AND_TELL


def test_connections_have_buckets_of_their_own() -> None:
    clock = Clock()
    limiter = ConnectionRateLimiter(rate_per_second=1, burst=2, clock=clock)
    assert [limiter.admit("flooder") for _ in range(3)][-1] is Admission.REFUSE_AND_TELL
    assert limiter.admit("quiet") is Admission.ADMIT


def test_the_bucket_never_holds_more_than_the_burst() -> None:
    clock = Clock()
    limiter = ConnectionRateLimiter(rate_per_second=100, burst=3, clock=clock)
    limiter.admit("c1")
    clock.now += 3600  # an hour of silence is not an hour of credit
    assert [limiter.admit("c1") for _ in range(4)] == [Admission.ADMIT] * 3 + [
        Admission.REFUSE_AND_TELL
    ]
