"""The nydus variants' images, made by ``nri-optimizer convert``'s built-in converter (nydus-image 2.2.0).

For each image of the config and each nydus variant, one conversion: the image (in the config's registry, or pushed
into the target by the harness) into the variant's tag in the target registry. The variant's ``prefetch`` decides
the prefetch table: ``off`` and ``all`` none (with ``all`` nydusd prefetches every blob whatever the table says),
``list`` our recorded list (``images[].list``, else the plugin's result for the image), whose files then also lead
each blob. nydusd prefetches what the image's table says, so the variants differ in that alone.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.prefetch.config import BenchConfig, Image, Variant
from nri_optimizer.cli import convert as single
from nri_optimizer.errors import OptimizerError


class ConvertError(OptimizerError):
    pass


@dataclass(frozen=True)
class Conversion:
    source: str
    target: str
    list_file: Path | None  # None: no prefetch table
    insecure: bool  # both registries may be plain HTTP

    def printable(self) -> str:
        """The same conversion as a command line."""
        flags = ["--list", str(self.list_file)] if self.list_file is not None else ["--no-list"]
        flags += ["--source-insecure", "--target-insecure"] if self.insecure else []
        return shlex.join(["nri-optimizer", "convert", "--source", self.source, "--target", self.target, *flags])

    def run(self, nydus_image: str) -> single.Converted:
        listed = single.read_list(self.list_file).paths if self.list_file is not None else None
        return single.convert(self.source, self.target, listed, nydus_image=nydus_image,
                              source_insecure=self.insecure, target_insecure=self.insecure)


def list_for(image: Image, reference: str, persist_dir: str) -> Path:
    """The recorded list of `image`: its `list` key, else where the plugin saved it for `reference`."""
    return image.list_file or Path(single.default_list(persist_dir, reference))


def plan(config: BenchConfig, target: str, *, persist_dir: str) -> list[Conversion]:
    """The conversions of every image into every nydus variant's tag in `target`."""
    return [variant_conversion(config, image, variant, target, persist_dir=persist_dir)
            for image in config.images for variant in config.variants if variant.snapshotter == "nydus"]


def variant_conversion(config: BenchConfig, image: Image, variant: Variant, target: str, *,
                       persist_dir: str) -> Conversion:
    """The conversion of `image` into the tag of nydus variant `variant` in `target`."""
    in_target = bool(image.build or image.archive) or config.local
    source = f"{target if in_target else config.registry}/{image.name}"
    out = f"{target}/{image.name}{variant.tag_suffix}"
    insecure = config.insecure or config.local
    if variant.prefetch != "list":
        return Conversion(source, out, None, insecure)
    # The list was recorded under the reference the node ran (the registry's host does not matter).
    recorded = list_for(image, f"{target if config.local else config.registry}/{image.name}", persist_dir)
    if not recorded.is_file():
        raise ConvertError(f"{image.name}: no recorded list at {recorded}; record one "
                           f"(nri-optimizer profile) or set the image's `list` in the config")
    return Conversion(source, out, recorded, insecure)


def run_plan(conversions: Sequence[Conversion], nydus_image: str, prog: str) -> int:
    """Run the conversions in order; stop at the first that fails (the error is raised)."""
    for conversion in conversions:
        print(f"{prog}: {conversion.printable()}", file=sys.stderr, flush=True)
        converted = conversion.run(nydus_image)
        print(f"{prog}: pushed {converted.target}", file=sys.stderr, flush=True)
    return 0
