"""The bench-image config: the seed's YAML (``registry``, ``insecure_registry``, ``images: [{name, arg, ready}]``)
plus explicit readiness, repetitions and variants. Every mistake is one line naming the key and the fix.

.. code-block:: yaml

    registry: local            # the harness's docker-registry on 127.0.0.1; or HOST[:PORT][/NAMESPACE]
    insecure_registry: true    # plain HTTP (a local registry always is)
    repetitions: 3
    timeout: 120               # seconds an image may take to become ready (per image: `timeout`)
    pull_timeout: 600
    throttle: [100mbit/10ms, 20mbit/40ms]   # optional: links RATE/RTT between the local registry and its clients
                               # (shaping.py); every setting runs the whole benchmark
    settle: 20                 # seconds nydusd may go on fetching after ready before "in all" is read
    images:
      - name: bench-web:1
        build: web             # local registry: build this built-in image (web, db; wordpress, python-web,
        arg: -e PORT=18080     #   node-web) offline and push it. arg: docker-run style; -e/--env only
        ready: {url: "http://127.0.0.1:18080/"}
        list: record           # record our list in the run (nri-optimizer profile), or a file's path
      - name: bench-db:1
        archive: db.tar        # local registry: push this OCI image-layout tarball
        ready: {line: "ready to accept connections"}
      - name: hello:1
        ready: exit            # or `start` (ready when StartContainer returns)
    variants:                  # default: oci, nydus, nydus-prefetch-all, nydus-prefetch-list, nydus-runtime-list
      - {name: oci, snapshotter: overlayfs}
      - {name: nydus-prefetch-list, snapshotter: nydus, tag_suffix: _nydus_prefetch, prefetch: list}
      # the image converted without a list; the list handed to nydus-snapshotter when the pod starts
      - {name: nydus-runtime-list, snapshotter: nydus, tag_suffix: _nydus, prefetch: runtime}
      # the list as the prefetch table only, the blob in the layer's order
      - {name: nydus-list-unordered, snapshotter: nydus, tag_suffix: _nydus_unordered, prefetch: list,
         reorder: false}
      # every listed file prefetched whole, also those the start read only in small part (default: 256KiB,
      # nri-optimizer convert --unread-budget; for prefetch list and runtime)
      - {name: nydus-list-every-file, snapshotter: nydus, tag_suffix: _nydus_every, prefetch: list,
         unread_budget: all}
      # the same list, nydusd prefetching with 8 threads in requests of up to 1 MiB (fs_prefetch; default: the
      # run's prefetch_threads, 128 KiB requests, no rate limit)
      - {name: nydus-list-1m, snapshotter: nydus, tag_suffix: _nydus_prefetch, prefetch: list,
         nydusd: {threads_count: 8, merging_size: 1048576, bandwidth_rate: 0}}
      # nydusd's own list (its access pattern, recorded in the run) instead of ours
      - {name: nydus-nydusd-list, snapshotter: nydus, tag_suffix: _nydus_nydusdlist, prefetch: list, list: nydusd}
    nydus:                     # optional; each tool defaults to the one on PATH (flags override these)
      snapshotter: /opt/nydus/bin/containerd-nydus-grpc
      nydusd: /opt/nydus/bin/nydusd
      nydus_image: /opt/nydus/bin/nydus-image   # the converter (default: PATH, then `make nydus`'s cache)
      prefetch_threads: 4      # nydusd's fs_prefetch.threads_count
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from benchmarks.prefetch.apps import APPS
from benchmarks.prefetch.shaping import Link, ShapingError
from nri_optimizer.errors import ConfigError as ConfigError
from nri_optimizer.errors import UsageError
from nri_optimizer.nydus import partial
from nri_optimizer.results import reference
from testbed.nydus import FsPrefetch

LOCAL = "local"
ReadyKind = Literal["url", "line", "exit", "start"]
# off: nothing; all: every blob (prefetch_all); list: the image's table (converted with a list); runtime: the list
# handed to nydus-snapshotter when the pod starts (the image has no table).
Prefetch = Literal["off", "all", "list", "runtime"]
ListSource = Literal["ours", "nydusd"]  # the plugin's recorded list, or nydusd's access pattern
SNAPSHOTTERS = ("overlayfs", "nydus")
BUILTIN_WORKLOADS = ("web", "db", *APPS)
RECORD = "record"


@dataclass(frozen=True)
class Ready:
    kind: ReadyKind
    value: str = ""  # the URL, or the text a log line contains

    def describe(self) -> str:
        return {
            "url": f"{self.value} answers 2xx/3xx",
            "line": f"a log line contains {self.value!r}",
            "exit": "the container exits with 0",
            "start": "StartContainer returns",
        }[self.kind]


@dataclass(frozen=True)
class Image:
    name: str  # repository:tag under the registry
    ready: Ready
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    build: str | None = None  # a built-in workload (local registry only)
    archive: Path | None = None  # an OCI image-layout tarball (local registry only)
    list_file: Path | None = None  # the recorded list, for convert (default: the plugin's result)
    record: bool = False  # `list: record`: the run records it (then list_file is None)


Conversion = tuple[ListSource, bool, int | None, str]  # list, reordered, unread budget, read in part


def default_conversion(source: ListSource) -> Conversion:
    """How nri-optimizer convert converts with a list by default: reordered, its default budget, on demand."""
    return source, True, partial.DEFAULT_BUDGET, "on-demand"


@dataclass(frozen=True)
class Variant:
    name: str
    snapshotter: str
    tag_suffix: str = ""
    prefetch: Prefetch | None = None  # nydus only: what nydusd prefetches
    list_source: ListSource = "ours"  # prefetch list and runtime: which list
    reorder: bool = True  # prefetch list: the listed files lead the blob (else the table only)
    # prefetch list and runtime: which files read in part are left on demand (nri_optimizer.nydus.partial)
    unread_budget: int | None = partial.DEFAULT_BUDGET
    read_in_part: str = "on-demand"  # what becomes of those files (nri-optimizer convert --read-in-part)
    nydusd: FsPrefetch | None = None  # nydus variants that prefetch: nydusd's settings (None: the run's)

    @property
    def conversion(self) -> Conversion | None:
        """What the variant's image is converted with: (list, reordered, unread budget, read in part), or None for no
        prefetch table."""
        if self.prefetch != "list":
            return None
        return self.list_source, self.reorder, self.unread_budget, self.read_in_part

    @property
    def lists(self) -> ListSource | None:
        """The list the variant needs, converted in or handed over at run time."""
        return self.list_source if self.prefetch in ("list", "runtime") else None


DEFAULT_VARIANTS = (
    Variant("oci", "overlayfs"),
    Variant("nydus", "nydus", "_nydus", "off"),
    Variant("nydus-prefetch-all", "nydus", "_nydus_prefetchall", "all"),
    Variant("nydus-prefetch-list", "nydus", "_nydus_prefetch", "list"),
    Variant("nydus-runtime-list", "nydus", "_nydus", "runtime"),
)


@dataclass(frozen=True)
class NydusTools:
    """Where the nydus tools are (None: look on PATH); relative paths are relative to the config file."""

    snapshotter: str | None = None  # containerd-nydus-grpc
    nydusd: str | None = None
    nydus_image: str | None = None  # the converter (nri-optimizer convert's built-in one runs it)
    prefetch_threads: int = 4


NYDUS_KEYS = ("snapshotter", "nydusd", "nydus_image")
FS_PREFETCH_KEYS = ("threads_count", "merging_size", "bandwidth_rate")


@dataclass(frozen=True)
class BenchConfig:
    registry: str  # LOCAL, or HOST[:PORT][/NAMESPACE]
    insecure: bool
    repetitions: int
    pull_timeout: float
    links: tuple[Link, ...]  # the local registry's link settings, one benchmark each; empty: not shaped
    images: tuple[Image, ...]
    variants: tuple[Variant, ...]
    nydus: NydusTools = NydusTools()
    settle: float = 20.0  # seconds nydusd may keep fetching after ready before its total is read

    @property
    def local(self) -> bool:
        return self.registry == LOCAL

    def reference(self, registry: str, image: Image, variant: Variant) -> str:
        """The reference CRI pulls: `registry` is the address the local registry got, or the configured one."""
        return f"{registry}/{image.name}{variant.tag_suffix}"


def load(path: Path, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Read and check the file; `overrides` (from flags) replace top-level keys and are checked as they are."""
    try:
        import yaml  # only bench-image needs YAML
    except ImportError:
        raise ConfigError("PyYAML is not installed: pip install pyyaml") from None

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if overrides and isinstance(data, dict):
        data = {**data, **overrides}
    return parse(data, path)


def parse(data: Any, path: Path) -> BenchConfig:
    where = _Where(path)
    if not isinstance(data, dict):
        raise where.error("", data, "a mapping with registry, images, ...")
    where.known(
        data,
        "",
        {
            "registry",
            "insecure_registry",
            "repetitions",
            "timeout",
            "pull_timeout",
            "throttle",
            "settle",
            "images",
            "variants",
            "nydus",
        },
    )
    registry = data.get("registry", LOCAL)
    if not isinstance(registry, str) or not registry or (registry != LOCAL and not _valid_registry(registry)):
        raise where.error("registry", registry, f"{LOCAL!r} or HOST[:PORT][/NAMESPACE], e.g. registry: local")
    insecure = data.get("insecure_registry", registry == LOCAL)
    if not isinstance(insecure, bool):
        raise where.error("insecure_registry", insecure, "true or false")
    repetitions = where.number(data, "repetitions", 3, integer=True)
    timeout = where.number(data, "timeout", 120)
    pull_timeout = where.number(data, "pull_timeout", 600)
    throttle = data.get("throttle")
    links = _links(where, throttle)
    settle = where.number(data, "settle", 20)
    images = data.get("images")
    if not isinstance(images, list) or not images:
        raise where.error("images", images, "a list of {name, ready, ...}, e.g. images: [{name: web:1, ready: exit}]")
    parsed = tuple(_image(where, f"images[{i}]", item, timeout, path.parent) for i, item in enumerate(images))
    if len({image.name for image in parsed}) != len(parsed):
        raise where.error("images", [image.name for image in parsed], "each name once")
    for i, image in enumerate(parsed):
        key = f"images[{i}]"
        if (image.build or image.archive) and registry != LOCAL:
            raise where.error(
                f"{key}.{'build' if image.build else 'archive'}",
                image.build or str(image.archive),
                "only with registry: local (the harness pushes it there)",
            )
        if registry == LOCAL and not (image.build or image.archive):
            raise where.error(
                key,
                image.name,
                f"build: ({', '.join(BUILTIN_WORKLOADS)}) or archive: (an OCI "
                "image-layout tarball): the local registry starts empty",
            )
    variants = data.get("variants")
    chosen = DEFAULT_VARIANTS if variants is None else _variants(where, variants)
    config = BenchConfig(
        registry,
        insecure,
        int(repetitions),
        pull_timeout,
        links,
        parsed,
        chosen,
        _nydus(where, data.get("nydus"), path.parent),
        settle,
    )
    for image in parsed:
        for variant in chosen:
            ref = config.reference("127.0.0.1:5000" if registry == LOCAL else registry, image, variant)
            try:
                reference.parse(ref)
            except reference.ReferenceError:
                raise where.error(
                    "images",
                    image.name,
                    f"names that make valid references with each variant's tag suffix; {ref!r} is not",
                ) from None
    if links and registry != LOCAL:
        raise where.error("throttle", throttle, "only with registry: local (it shapes that registry's port on lo)")
    for i, image in enumerate(parsed):
        if image.record and registry != LOCAL:
            raise where.error(f"images[{i}].list", RECORD, "a recorded list's path: `record` needs registry: local")
    return config


def _links(where: _Where, value: Any) -> tuple[Link, ...]:
    expected = "RATE/RTT or a list of them, e.g. throttle: [100mbit/10ms, 20mbit/40ms], or no key"
    if value is None:
        return ()
    texts = value if isinstance(value, list) else [value]
    if not texts or not all(isinstance(text, str) for text in texts):
        raise where.error("throttle", value, expected)
    try:
        links = tuple(Link.parse(text) for text in texts)
    except ShapingError:
        raise where.error("throttle", value, expected) from None
    if len(set(links)) != len(links):
        raise where.error("throttle", value, "each setting once")
    return links


class _Where:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, got: Any, expected: str) -> ConfigError:
        shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
        return ConfigError(f"{self.path}: {key or 'top level'}: got {shown}; expected {expected}")

    def known(self, data: dict[str, Any], prefix: str, keys: set[str]) -> None:
        for key in data:
            if key not in keys:
                raise ConfigError(f"{self.path}: {prefix}{key}: unknown key; known: {', '.join(sorted(keys))}")

    def number(
        self, data: dict[str, Any], key: str, default: float, *, integer: bool = False, prefix: str = ""
    ) -> float:
        value = data.get(key, default)
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or value <= 0:
            raise self.error(prefix + key, value, f"a {'whole ' if integer else ''}number > 0, e.g. {key}: {default}")
        return float(value)


def _valid_registry(text: str) -> bool:
    try:
        parsed = reference.parse(f"{text}/probe:1")
    except reference.ReferenceError:
        return False
    return parsed.domain == text.split("/")[0]  # a first component that is not a host would be a repository


def _image(where: _Where, key: str, item: Any, default_timeout: float, base: Path) -> Image:
    if not isinstance(item, dict):
        raise where.error(key, item, "a mapping {name, ready, ...}")
    where.known(item, f"{key}.", {"name", "arg", "ready", "timeout", "build", "archive", "list"})
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise where.error(f"{key}.name", name, "REPOSITORY[:TAG], e.g. name: nginx:1.25")
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    build = item.get("build")
    if build is not None and build not in BUILTIN_WORKLOADS:
        raise where.error(f"{key}.build", build, f"one of {', '.join(BUILTIN_WORKLOADS)}")
    archive = item.get("archive")
    if archive is not None and not isinstance(archive, str):
        raise where.error(f"{key}.archive", archive, "the path of an OCI image-layout tarball")
    if build is not None and archive is not None:
        raise where.error(f"{key}", "build and archive", "one of them")
    list_file = item.get("list")
    if list_file is not None and not isinstance(list_file, str):
        raise where.error(f"{key}.list", list_file, f"the path of a recorded list, or {RECORD}")
    record = list_file == RECORD
    return Image(
        name=name,
        ready=_ready(where, f"{key}.ready", item.get("ready")),
        timeout=where.number(item, "timeout", default_timeout, prefix=f"{key}."),
        env=_env(where, f"{key}.arg", item.get("arg", "")),
        build=build,
        archive=base / archive if archive is not None else None,
        list_file=base / list_file if list_file is not None and not record else None,
        record=record,
    )


def _ready(where: _Where, key: str, value: Any) -> Ready:
    expected = (
        "{url: URL}, {line: TEXT}, exit or start, e.g. ready: {url: 'http://127.0.0.1:8080/'} "
        "(readiness is never guessed)"
    )
    if value in ("exit", "start"):
        return Ready(value)
    if isinstance(value, dict) and len(value) == 1:
        ((kind, text),) = value.items()
        if kind == "url" and isinstance(text, str) and re.match(r"https?://", text):
            return Ready("url", text)
        if kind == "line" and isinstance(text, str) and text:
            return Ready("line", text)
    raise where.error(key, value, expected)


def _env(where: _Where, key: str, arg: Any) -> dict[str, str]:
    """The seed's `arg` is docker-run options; the ones that mean something through CRI are -e/--env K=V."""
    if not isinstance(arg, str):
        raise where.error(key, arg, "docker-run style options as one string, e.g. arg: -e KEY=VALUE")
    try:
        words = shlex.split(arg)
    except ValueError as exc:
        raise where.error(key, arg, f"shell words ({exc})") from None
    env: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("-e", "--env") and i + 1 < len(words):
            assignment, i = words[i + 1], i + 2
        elif word.startswith("--env="):
            assignment, i = word.removeprefix("--env="), i + 1
        else:
            raise where.error(key, arg, f"only -e/--env KEY=VALUE options (not {word!r})")
        name, equals, value = assignment.partition("=")
        if not name or not equals:
            raise where.error(key, arg, f"KEY=VALUE after -e (not {assignment!r})")
        env[name] = value
    return env


def _nydus(where: _Where, value: Any, base: Path) -> NydusTools:
    if value is None:
        return NydusTools()
    if not isinstance(value, dict):
        raise where.error("nydus", value, "a mapping {snapshotter, nydusd, nydus_image, prefetch_threads}")
    where.known(value, "nydus.", {*NYDUS_KEYS, "prefetch_threads"})
    paths: dict[str, str | None] = {}
    for key in NYDUS_KEYS:
        given = value.get(key)
        if given is not None and (not isinstance(given, str) or not given):
            raise where.error(f"nydus.{key}", given, "the path of the executable, or no key (then: from PATH)")
        paths[key] = None if given is None else str(base / given)
    threads = where.number(value, "prefetch_threads", 4, integer=True, prefix="nydus.")
    if threads > 1024:
        raise where.error("nydus.prefetch_threads", int(threads), "at most 1024 (nydusd's limit)")
    return NydusTools(paths["snapshotter"], paths["nydusd"], paths["nydus_image"], int(threads))


def _fs_prefetch(where: _Where, key: str, value: Any) -> FsPrefetch:
    """nydusd's fs_prefetch settings of a variant, in nydusd's names and units (bytes, bytes/s)."""
    if not isinstance(value, dict) or not value:
        raise where.error(key, value, "a mapping {threads_count, merging_size, bandwidth_rate} (nydusd's fs_prefetch)")
    where.known(value, f"{key}.", set(FS_PREFETCH_KEYS))
    numbers = {}
    for name in FS_PREFETCH_KEYS:
        number = value.get(name, getattr(FsPrefetch(), name))
        if isinstance(number, bool) or not isinstance(number, int) or number < (name == "threads_count"):
            least = "a whole number > 0" if name == "threads_count" else "a whole number >= 0 (bytes)"
            raise where.error(f"{key}.{name}", number, least)
        numbers[name] = number
    if numbers["threads_count"] > 1024:
        raise where.error(f"{key}.threads_count", numbers["threads_count"], "at most 1024 (nydusd's limit)")
    return FsPrefetch(**numbers)


def _variants(where: _Where, value: Any) -> tuple[Variant, ...]:
    if not isinstance(value, list) or not value:
        raise where.error("variants", value, "a list of {name, snapshotter, tag_suffix, prefetch}")
    variants = []
    for i, item in enumerate(value):
        key = f"variants[{i}]"
        if not isinstance(item, dict):
            raise where.error(key, item, "a mapping {name, snapshotter, tag_suffix, prefetch}")
        where.known(
            item,
            f"{key}.",
            {
                "name",
                "snapshotter",
                "tag_suffix",
                "prefetch",
                "list",
                "reorder",
                "unread_budget",
                "read_in_part",
                "nydusd",
            },
        )
        name, snapshotter = item.get("name"), item.get("snapshotter")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise where.error(f"{key}.name", name, "a short name (letters, digits, . _ -), e.g. name: oci")
        if snapshotter not in SNAPSHOTTERS:
            raise where.error(f"{key}.snapshotter", snapshotter, f"one of {', '.join(SNAPSHOTTERS)}")
        suffix = item.get("tag_suffix", "")
        if not isinstance(suffix, str):
            raise where.error(f"{key}.tag_suffix", suffix, "text appended to each image's tag, e.g. _nydus")
        # YAML 1.1 reads a bare `off` as false.
        prefetch = "off" if item.get("prefetch") is False else item.get("prefetch")
        if snapshotter == "nydus" and prefetch not in ("off", "all", "list", "runtime"):
            raise where.error(
                f"{key}.prefetch",
                prefetch,
                "off, all, list or runtime (what nydusd prefetches: "
                "nothing, everything, the image's table, or the list handed over at run time)",
            )
        if snapshotter != "nydus" and prefetch is not None:
            raise where.error(f"{key}.prefetch", prefetch, "no prefetch key: only nydus variants prefetch")
        source = item.get("list", "ours")
        if "list" in item and prefetch not in ("list", "runtime"):
            raise where.error(f"{key}.list", source, "no list key: only prefetch list and runtime take a list")
        if source not in ("ours", "nydusd"):
            raise where.error(
                f"{key}.list",
                source,
                "ours (the plugin's recorded list) or nydusd (its access pattern, recorded in the run)",
            )
        reorder = item.get("reorder", True)
        if "reorder" in item and prefetch != "list":
            raise where.error(f"{key}.reorder", reorder, "no reorder key: only prefetch list converts with a list")
        if not isinstance(reorder, bool):
            raise where.error(f"{key}.reorder", reorder, "true (the listed files lead the blob) or false")
        budget = item.get("unread_budget", partial.DEFAULT_BUDGET)
        if "unread_budget" in item and prefetch not in ("list", "runtime"):
            raise where.error(
                f"{key}.unread_budget", budget, "no unread_budget key: only prefetch list and runtime take a list"
            )
        try:
            budget = partial.parse_budget(str(budget)) if "unread_budget" in item else budget
        except UsageError:
            raise where.error(
                f"{key}.unread_budget", budget, "a size (e.g. 256KiB, 1MiB, 0) or all (nri-optimizer convert)"
            ) from None
        read_in_part = item.get("read_in_part", "on-demand")
        if "read_in_part" in item and prefetch not in ("list", "runtime"):
            raise where.error(
                f"{key}.read_in_part", read_in_part, "no read_in_part key: only prefetch list and runtime take a list"
            )
        if read_in_part not in partial.READ_IN_PART:
            raise where.error(
                f"{key}.read_in_part",
                read_in_part,
                "on-demand (out of the prefetch table) or last (prefetched after the rest)",
            )
        settings = _fs_prefetch(where, f"{key}.nydusd", item["nydusd"]) if "nydusd" in item else None
        if settings is not None and prefetch in (None, "off"):
            raise where.error(f"{key}.nydusd", item["nydusd"], "no nydusd key: only nydus variants that prefetch")
        variants.append(
            Variant(
                name,
                snapshotter,
                suffix,
                cast(Prefetch | None, prefetch),
                cast(ListSource, source),
                reorder,
                budget,
                read_in_part,
                settings,
            )
        )
    if len({v.name for v in variants}) != len(variants):
        raise where.error("variants", [v.name for v in variants], "each name once")
    images: dict[str, Variant] = {}
    for variant in variants:  # one tag, one image: variants may share a tag only if they convert alike
        other = images.setdefault(variant.tag_suffix, variant)
        if variant.snapshotter != other.snapshotter or variant.conversion != other.conversion:
            raise where.error(
                "variants",
                [other.name, variant.name],
                f"tag suffixes of their own: their images differ, and {variant.tag_suffix!r} can name one",
            )
    return tuple(variants)
