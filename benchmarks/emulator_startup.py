"""How fast `hatchway hatchet-emulator` is ready, against two baselines measured
in the same run: a bare Python interpreter, and importing hatchet_sdk (what the
emulator avoids by loading the SDK's contracts from a descriptor set).

Prints figures and ratios; asserts nothing (machines here are noisy).
Run: .venv/bin/python benchmarks/emulator_startup.py [rounds]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def seconds_until_exit(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)  # noqa: S603
    return time.perf_counter() - started


def seconds_until_ready() -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "hatchway_local.cli", "hatchet-emulator", "--port", "0"],
        stdout=subprocess.PIPE,
    )
    try:
        for line in process.stdout or ():
            if line.strip() == b"ready":
                return time.perf_counter() - started
        raise RuntimeError("the emulator exited before printing 'ready'")
    finally:
        process.terminate()
        process.wait(10)


def report(name: str, samples: list[float], baseline: float | None = None) -> float:
    median = statistics.median(samples)
    ratio = f"  ({median / baseline:.1f}x python)" if baseline else ""
    sys.stdout.write(
        f"{name:<34} median {median * 1000:7.0f} ms  min {min(samples) * 1000:7.0f} ms{ratio}\n"
    )
    return median


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    python = [seconds_until_exit([sys.executable, "-c", "pass"]) for _ in range(rounds)]
    sdk = [seconds_until_exit([sys.executable, "-c", "import hatchet_sdk"]) for _ in range(rounds)]
    ready = [seconds_until_ready() for _ in range(rounds)]
    sys.stdout.write(f"{rounds} rounds each\n")
    base = report("python -c pass", python)
    report("python -c 'import hatchet_sdk'", sdk, base)
    emulator = report("hatchway hatchet-emulator -> ready", ready, base)
    share = emulator / statistics.median(sdk)
    sys.stdout.write(f"emulator ready in {share:.2f}x the time of importing hatchet_sdk\n")


if __name__ == "__main__":
    main()
