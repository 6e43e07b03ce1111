"""The nydus variants' images, made by ``nri-optimizer convert``'s built-in converter (nydus-image 2.2.0).

For each image of the config and each nydus variant's tag, one conversion: the image (in the config's registry, or
pushed into the target by the harness) into that tag in the target registry. The variant's ``prefetch`` decides the
prefetch table: ``off``, ``all`` and ``runtime`` none (with ``all`` nydusd prefetches every blob whatever the table
says; with ``runtime`` the list is handed over when the pod starts), ``list`` the variant's list, whose files then
also lead each blob (unless ``reorder: false``): ours (``images[].list``, the one the run recorded, else the
plugin's result for the image) or nydusd's (its access pattern, which only a ``run`` records). Variants that share a
tag share its conversion.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.prefetch.config import BenchConfig, Image, ListSource, Variant
from nri_optimizer.cli import convert as single
from nri_optimizer.errors import OptimizerError
from nri_optimizer.nydus import partial


class ConvertError(OptimizerError):
    pass


@dataclass(frozen=True)
class Conversion:
    source: str
    target: str
    list_file: Path | None  # None: no prefetch table
    insecure: bool  # both registries may be plain HTTP
    reorder: bool = True  # with a list: its files lead the blob
    unread_budget: int | None = partial.DEFAULT_BUDGET  # with a list: which files are read in part
    read_in_part: str = "on-demand"  # and what becomes of them (nri_optimizer.nydus.partial.arrange)

    def printable(self) -> str:
        """The same conversion as a command line."""
        flags = ["--list", str(self.list_file)] if self.list_file is not None else ["--no-list"]
        flags += [] if self.reorder or self.list_file is None else ["--no-reorder"]
        if self.list_file is not None and self.unread_budget != partial.DEFAULT_BUDGET:
            flags += ["--unread-budget", "all" if self.unread_budget is None else str(self.unread_budget)]
        if self.list_file is not None and self.read_in_part != "on-demand":
            flags += ["--read-in-part", self.read_in_part]
        flags += ["--source-insecure", "--target-insecure"] if self.insecure else []
        return shlex.join(["nri-optimizer", "convert", "--source", self.source, "--target", self.target, *flags])

    def run(self, nydus_image: str) -> single.Converted:
        recorded = single.read_list(self.list_file, self.unread_budget) if self.list_file is not None else None
        listed, on_demand = (
            partial.arrange(recorded.paths, recorded.partial, self.read_in_part) if recorded else ([], [])
        )
        return single.convert(
            self.source,
            self.target,
            listed if recorded is not None else None,
            on_demand=on_demand,
            nydus_image=nydus_image,
            source_insecure=self.insecure,
            target_insecure=self.insecure,
            reorder=self.reorder,
        )


def list_for(image: Image, reference: str, persist_dir: str) -> Path:
    """The recorded list of `image`: its `list` key, else where the plugin saved it for `reference`."""
    return image.list_file or Path(single.default_list(persist_dir, reference))


def plan(config: BenchConfig, target: str, *, persist_dir: str) -> list[Conversion]:
    """The conversions of every image into every nydus variant's tag in `target`, one per tag."""
    conversions: dict[str, Conversion] = {}
    for image in config.images:
        lists: dict[ListSource, Path] = {"ours": recorded_list(config, image, target, persist_dir)}
        for variant in nydus_tags(config):
            conversion = variant_conversion(config, image, variant, target, lists=lists)
            conversions.setdefault(conversion.target, conversion)
    return list(conversions.values())


def nydus_tags(config: BenchConfig) -> list[Variant]:
    """One nydus variant per tag suffix (variants that share one convert alike: the config checks it)."""
    first: dict[str, Variant] = {}
    for variant in config.variants:
        if variant.snapshotter == "nydus":
            first.setdefault(variant.tag_suffix, variant)
    return list(first.values())


def recorded_list(config: BenchConfig, image: Image, target: str, persist_dir: str) -> Path:
    """The plugin's list of `image`, which must exist: the image's `list`, else the plugin's result for it."""
    # The list was recorded under the reference the node ran (the registry's host does not matter).
    recorded = list_for(image, f"{target if config.local else config.registry}/{image.name}", persist_dir)
    if not recorded.is_file():
        raise ConvertError(
            f"{image.name}: no recorded list at {recorded}; record one "
            f"(nri-optimizer profile) or set the image's `list` in the config"
        )
    return recorded


def variant_conversion(
    config: BenchConfig, image: Image, variant: Variant, target: str, *, lists: Mapping[ListSource, Path]
) -> Conversion:
    """The conversion of `image` into the tag of nydus variant `variant` in `target`, with `lists` (by source)."""
    in_target = bool(image.build or image.archive) or config.local
    source = f"{target if in_target else config.registry}/{image.name}"
    out = f"{target}/{image.name}{variant.tag_suffix}"
    insecure = config.insecure or config.local
    if variant.conversion is None:
        return Conversion(source, out, None, insecure)
    which, reorder, budget, read_in_part = variant.conversion
    if which not in lists:
        raise ConvertError(
            f"{image.name}: {variant.name} converts with nydusd's list, which only `bench-image run` "
            "records (from nydusd's access pattern)"
        )
    return Conversion(source, out, lists[which], insecure, reorder, budget, read_in_part)


def runtime_table(list_file: Path, budget: int | None, read_in_part: str) -> Path:
    """The list to hand over at run time: `list_file` as convert makes its prefetch table of it (the files read in
    part under `budget` left out, or last), written beside it once."""
    if budget is None:
        return list_file
    table = list_file.with_name(f"{list_file.name}.table-{budget}-{read_in_part}")
    if not table.exists():
        recorded = single.read_list(list_file, budget)
        listed, on_demand = partial.arrange(recorded.paths, recorded.partial, read_in_part)
        left = set(on_demand)
        kept = [path for path in listed if path not in left]
        table.write_bytes("".join(f"{path}\n" for path in kept).encode(errors="surrogateescape"))
    return table


def run_plan(conversions: Sequence[Conversion], nydus_image: str, prog: str) -> int:
    """Run the conversions in order; stop at the first that fails (the error is raised)."""
    for conversion in conversions:
        print(f"{prog}: {conversion.printable()}", file=sys.stderr, flush=True)
        converted = conversion.run(nydus_image)
        print(f"{prog}: pushed {converted.target}", file=sys.stderr, flush=True)
    return 0
