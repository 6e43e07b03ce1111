"""``bench-image convert``: the nydus variants' images, as the seed's convert.py made them.

For each image of the config: copy it into the target registry (``nydusify copy``; an image the harness builds or
has as a tarball is pushed by us), then one ``nydusify convert`` per nydus variant, its tag suffix naming the
target. The variant's ``prefetch`` decides the image's prefetch table: ``off`` none, ``all`` the whole root (the
pattern ``/``), ``list`` our recorded list (``images[].list``, else the plugin's result for the image). nydusd
then prefetches what the image's table says, so the variants differ in that alone.

Where nydusify is not installed this says so and prints the commands.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchmarks.prefetch.config import BenchConfig, Image, Variant
from nri_optimizer.cli import convert as single
from nri_optimizer.errors import OptimizerError

PREFETCH_ALL = "/\n"  # nydus-image reads patterns; the root directory is everything


class ConvertError(OptimizerError):
    pass


@dataclass(frozen=True)
class Step:
    argv: list[str]
    stdin_file: Path | None = None
    stdin_text: str | None = None

    def printable(self) -> str:
        command = shlex.join(self.argv)
        if self.stdin_file is not None:
            return f"{command} < {shlex.quote(str(self.stdin_file))}"
        if self.stdin_text is not None:
            lines = " ".join(shlex.quote(line) for line in self.stdin_text.splitlines())
            return f"printf '%s\\n' {lines} | {command}"
        return command

    def run(self, stdout: IO[str] | None = None) -> int:
        """Run it; its output goes to `stdout` (default: ours)."""
        if self.stdin_file is not None:
            with open(self.stdin_file, "rb") as stdin:
                return subprocess.run(self.argv, stdin=stdin, stdout=stdout, check=False).returncode
        return subprocess.run(self.argv, input=(self.stdin_text or "").encode(), stdout=stdout,
                              check=False).returncode


def list_for(image: Image, reference: str, persist_dir: str) -> Path:
    """The recorded list of `image`: its `list` key, else where the plugin saved it for `reference`."""
    return image.list_file or Path(single.default_list(persist_dir, reference))


def plan(config: BenchConfig, target: str, *, nydusify: str, fs_version: str, persist_dir: str) -> list[Step]:
    """nydusify commands for every image and nydus variant (the copies of registry images included)."""
    steps: list[Step] = []
    for image in config.images:
        if not (image.build or image.archive) and config.registry != target:
            steps.append(Step([nydusify, "copy", "--source", f"{config.registry}/{image.name}",
                               "--target", f"{target}/{image.name}", *_insecure(config)]))
        for variant in config.variants:
            if variant.snapshotter == "nydus":
                steps.append(variant_step(config, image, variant, target, nydusify=nydusify, fs_version=fs_version,
                                          persist_dir=persist_dir))
    return steps


def variant_step(config: BenchConfig, image: Image, variant: Variant, target: str, *, nydusify: str,
                 fs_version: str, persist_dir: str) -> Step:
    """The nydusify convert of `image` (already in `target`) into the tag of nydus variant `variant`."""
    source = f"{target}/{image.name}"
    out = f"{source}{variant.tag_suffix}"
    patterns = single.nydusify_command(nydusify, source, out, fs_version, _insecure(config))
    if variant.prefetch == "off":
        assert patterns[-1] == "--prefetch-patterns"
        return Step(patterns[:-1])  # the same command without it: no prefetch table
    if variant.prefetch == "all":
        return Step(patterns, stdin_text=PREFETCH_ALL)
    # The list was recorded under the reference the node ran (the registry's host does not matter).
    recorded = list_for(image, f"{target if config.local else config.registry}/{image.name}", persist_dir)
    if not recorded.is_file():
        raise ConvertError(f"{image.name}: no recorded list at {recorded}; record one "
                           f"(nri-optimizer profile) or set the image's `list` in the config")
    return Step(patterns, stdin_file=recorded)


def _insecure(config: BenchConfig) -> list[str]:
    return ["--source-insecure", "--target-insecure"] if config.insecure else []


def run_plan(steps: Sequence[Step]) -> int:
    """Run the steps in order; stop at the first that fails and return its status."""
    for step in steps:
        print(f"nri-optimizer bench-image convert: {step.printable()}", flush=True)
        if status := step.run():
            return status
    return 0
