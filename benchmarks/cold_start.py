"""Cold starts and deployed sizes of every function, this layout against the one
before the runtime was split from the local tools (PREVIOUS_LAYOUT), in one run.

Per function: a fresh interpreter imports its app.py with only its code and layers
on the path (no site-packages), as a cold Lambda does; median of RUNS, beside a bare
interpreter and `import boto3` from the same layer. Size: the function's code plus
its layers, each deflated as Lambda stores them. Both layouts' layers are built here
the way `sam build` builds them (the previous one: BuildMethod python3.12, i.e. pip
resolving its requirements.txt; this one: layers/core/build_layer.py).

    make bench   (or: .venv/bin/python benchmarks/cold_start.py)
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from hatchway_local.packaging import (
    FUNCTIONS,
    build_layer,
    function_environment,
    import_function,
    layers_of,
    time_command,
    unzipped_size,
    zipped_size,
)

ROOT = Path(__file__).resolve().parent.parent
PREVIOUS_LAYOUT = "4a54af6"  # the last commit with one layer holding the whole package
RUNS = int(os.environ.get("BENCH_RUNS", "10"))
MB = 1024 * 1024


def say(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def previous_tree(target: Path) -> Path:
    archive = subprocess.run(  # noqa: S603 - git, a fixed commit
        ["git", "-C", str(ROOT), "archive", PREVIOUS_LAYOUT, "functions", "layers"],  # noqa: S607
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def previous_layer(tree: Path, artifacts: Path) -> Path:
    """What SAM's python3.12 builder made of it: pip resolving requirements.txt (only
    top-level pins) into python/, then the layer folder's own files beside them."""
    target = artifacts / "python"
    platforms = ["--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_28_x86_64"]
    subprocess.run(  # noqa: S603
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", *platforms, "--implementation", "cp", "--python-version",
            "3.12", "--target", str(target), "-r", str(tree / "layers/core/requirements.txt"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    subprocess.run(  # noqa: S603
        ["cp", "-r", str(tree / "layers/core/hatchway"), str(target)],  # noqa: S607
        check=True,
    )
    return target


def median_import(code: Path, layers: list[Path]) -> float:
    import_function(code, layers)  # once, so bytecode of the code dir exists as deployed
    times = sorted(import_function(code, layers).seconds for _ in range(RUNS))
    return times[len(times) // 2]


def measure(functions_dir: Path, layers: dict[str, Path], split: bool) -> dict[str, tuple]:
    env = function_environment()
    boto3 = time_command(
        [
            sys.executable,
            "-S",
            "-c",
            f"import sys; sys.path[:0]=[{str(layers['core'])!r}]; import boto3",
        ],
        env,
        RUNS,
    )
    rows: dict[str, tuple] = {"boto3": (boto3, 0, 0)}
    for function in FUNCTIONS:
        code = functions_dir / function
        if not code.is_dir():  # newer than the previous layout (the DLQ consumer)
            continue
        paths = [layers[name] for name in layers_of(function)] if split else [layers["core"]]
        seconds = median_import(code, paths)
        zipped = zipped_size(code, *paths)
        unzipped = unzipped_size(code) + sum(unzipped_size(p) for p in paths)
        rows[function] = (seconds, zipped, unzipped)
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="hatchway-bench-") as scratch:
        root = Path(scratch)
        say(f"cold imports (median of {RUNS} fresh processes) and deployed sizes")
        say(f"building layers: this tree, and {PREVIOUS_LAYOUT} (the previous layout) ...")
        build = ROOT / "layers/core/build_layer.py"
        now_layers = {
            name: build_layer(build, name, root / "now" / name) for name in ("core", "trigger")
        }
        tree = previous_tree(root / "before")
        before_layers = {"core": previous_layer(tree, root / "before-layer")}
        env = function_environment()
        bare = time_command([sys.executable, "-S", "-c", "pass"], env, RUNS)
        now = measure(ROOT / "functions", now_layers, split=True)
        before = measure(tree / "functions", before_layers, split=False)

        boto3_now, boto3_before = now["boto3"][0], before["boto3"][0]
        say(f"bare interpreter: {bare * 1000:.0f} ms; import boto3: {boto3_now * 1000:.0f} ms "
            f"(this layer), {boto3_before * 1000:.0f} ms (previous)")  # fmt: skip
        say()
        say(
            f"{'function':<15}{'import now':>11}{'x boto3':>9}{'before':>9}{'x boto3':>9}"
            f"{'speed-up':>10}{'zip now':>10}{'zip before':>12}{'unzipped now':>14}{'before':>9}"
        )
        for function in FUNCTIONS:
            seconds, zipped, unzipped = now[function]
            if function not in before:
                say(f"{function:<15}{seconds * 1000:>9.0f}ms{seconds / boto3_now:>8.1f}x"
                    f"{'(new)':>36}{zipped / MB:>8.1f}MB{unzipped / MB:>24.1f}MB")  # fmt: skip
                continue
            old_seconds, old_zipped, old_unzipped = before[function]
            say(
                f"{function:<15}{seconds * 1000:>9.0f}ms{seconds / boto3_now:>8.1f}x"
                f"{old_seconds * 1000:>7.0f}ms{old_seconds / boto3_before:>8.1f}x"
                f"{old_seconds / seconds:>9.1f}x{zipped / MB:>8.1f}MB{old_zipped / MB:>10.1f}MB"
                f"{unzipped / MB:>12.1f}MB{old_unzipped / MB:>7.1f}MB"
            )
        say()
        say("targets (idle 2-core machine): WebSocket functions <= 3x boto3 with < 20 MB of "
            "dependencies; the trigger <= 6x boto3")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
