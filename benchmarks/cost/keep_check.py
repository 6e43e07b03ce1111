"""(g) The `on_repeat = keep` check at StartContainer against the number of images recorded.

A node keeps a result per image (and workload, and timeout) in persist_dir. Under keep, each StartContainer first asks
whether its image's result is complete (results.runs.complete_result, the very function the plugin calls): that
must cost the same with 10,000 images recorded as with 10, or a busy node's start path grows with its history.

Each persist_dir is filled by results.runs.record, as the daemon writes, with short lists (a list's length does not
matter: the check reads the head of one file). Then the sizes are measured in rounds, interleaved, each round timing
checks of recorded images picked at random and of images never recorded (the miss a new image pays).
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.cost.harness import BenchError
from nri_optimizer.results import reference, runs
from nri_optimizer.results.formats import Entry
from nri_optimizer.results.key import ResultKey, result_key

ROUNDS = 20
CHECKS_PER_ROUND = 200
ENTRIES = [Entry(f"/usr/lib/lib{i}.so".encode(), 4096 * (i + 1), 1000 * i) for i in range(50)]


def image_key(i: int) -> ResultKey:
    """The i-th of a node's images: a thousand repositories in ten projects, a few tags each, as a registry holds."""
    return result_key(reference.parse(f"registry.example/project{i % 10}/app{i // 10 % 1000}:v{i // 10_000}.{i}"))


def fill(persist_dir: Path, images: int) -> None:
    for i in range(images):
        runs.record(str(persist_dir), image_key(i), ENTRIES, readable=False, on_repeat="keep", window=1)


def measure(
    sizes: tuple[int, ...], *, rounds: int = ROUNDS, checks: int = CHECKS_PER_ROUND
) -> dict[int, dict[str, list[float]]]:
    """size -> {"hit": [µs per check, one per round], "miss": [...]}, sizes interleaved round by round."""
    work = Path(tempfile.mkdtemp(prefix="nriopt-keepcheck-"))
    try:
        dirs = {}
        for size in sizes:
            dirs[size] = work / str(size)
            fill(dirs[size], size)
        timings: dict[int, dict[str, list[float]]] = {size: {"hit": [], "miss": []} for size in sizes}
        picker = random.Random(0)
        for r in range(rounds):
            for size in sizes if r % 2 == 0 else reversed(sizes):
                persist_dir = str(dirs[size])
                hits = [image_key(picker.randrange(size)) for _ in range(checks)]
                misses = [image_key(size + picker.randrange(1_000_000)) for _ in range(checks)]
                for kind, keys, expected in (("hit", hits, True), ("miss", misses, False)):
                    t0 = time.perf_counter()
                    found = [runs.complete_result(persist_dir, key) for key in keys]
                    timings[size][kind].append((time.perf_counter() - t0) / checks * 1e6)
                    if found != [expected] * checks:
                        raise BenchError(f"keep check with {size:,} images: a {kind} answered {not expected}")
        return timings
    finally:
        shutil.rmtree(work, ignore_errors=True)
