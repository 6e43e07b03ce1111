"""Fetch containerd, runc and busybox from Debian's archive into a private cache.

The system's apt configuration is never touched: every apt call gets a private source list, lists
directory and package cache, all under the cache folder. The archive address comes from the machine's
own apt sources, so whatever mirror the machine is set up with is the one used.

Cache layout (every entry appears atomically, so a reader never sees a half-written one):

    apt/<suite>/          private apt state for one suite
    debs/                 downloaded .deb files, kept so reruns are offline
    unpacked/<pkg>_<ver>/ dpkg-deb -x of one .deb
    containerd-<flavour>/ bin dir (symlinks) + runtime.json, what fetch_runtime returns
    <package>_<suite>.json  which unpacked file package_file returns (busybox-static, nydus-snapshotter,
                          docker-registry, containernetworking-plugins): found again without asking the archive
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from nri_optimizer.cache import cache_dir as cache_dir
from testbed import TestbedError

# flavour -> (suite, preferred upstream version). The suites are where Debian keeps that series; the
# preferred version is the one the project was checked against, taken when the suite still has it.
CONTAINERD_FLAVOURS: dict[str, tuple[str, str]] = {
    "2.1": ("sid", "2.1.9"),
    "1.7": ("trixie", "1.7.24"),
}
# bookworm's runc works with both containerds; sid's needs glibc 2.38, newer than bookworm's.
RUNC_SUITE = "bookworm"
BUSYBOX_SUITE = "bookworm"
# CNI plugins for pods with a network namespace of their own: sid's has the `tap` plugin (testbed.config.POD_NETWORK).
CNI_SUITE = "sid"

_CONTAINERD_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr")


@dataclass(frozen=True)
class Runtime:
    """A containerd flavour unpacked in the cache, ready to run from `bin_dir`."""

    flavour: str  # "2.1"
    version: str  # upstream containerd version, "2.1.9"
    deb_version: str  # Debian version of the containerd package, "2.1.9+ds1-5"
    runc_version: str  # Debian version of the runc package
    bin_dir: Path  # containerd, containerd-shim-runc-v2, ctr, runc

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def fetch_runtime(flavour: str, *, cache: Path | None = None) -> Runtime:
    """Return containerd `flavour` ("2.1" or "1.7") with runc, fetching it on first use."""
    if flavour not in CONTAINERD_FLAVOURS:
        raise TestbedError(f"unknown containerd flavour {flavour!r}: choose one of {sorted(CONTAINERD_FLAVOURS)}")
    cache = cache or cache_dir()
    target = cache / f"containerd-{flavour}"
    if (runtime := _load_runtime(target)) is not None:
        return runtime
    with _locked(cache):
        if (runtime := _load_runtime(target)) is not None:  # another process fetched it meanwhile
            return runtime
        suite, preferred = CONTAINERD_FLAVOURS[flavour]
        archive = _Archive(cache)
        ctd_version = archive.pick("containerd", suite, prefer=preferred, series=flavour)
        runc_version = archive.pick("runc", RUNC_SUITE)
        ctd_dir = archive.unpacked("containerd", ctd_version, suite)
        runc_dir = archive.unpacked("runc", runc_version, RUNC_SUITE)
        links = {name: ctd_dir / "usr/bin" / name for name in _CONTAINERD_BINARIES}
        links["runc"] = runc_dir / "usr/sbin/runc"
        runtime = Runtime(flavour, _upstream(ctd_version), ctd_version, runc_version, target / "bin")
        _publish_runtime(target, runtime, links)
        return runtime


def busybox_path(*, cache: Path | None = None) -> Path:
    """Return the static busybox binary (from busybox-static), fetching it on first use."""
    return package_file("busybox-static", BUSYBOX_SUITE, "bin/busybox", cache=cache)


def cni_plugins(*, cache: Path | None = None) -> Path:
    """The directory of Debian's CNI plugins (containernetworking-plugins), fetched on first use."""
    return package_file("containernetworking-plugins", CNI_SUITE, "usr/lib/cni/tap", cache=cache).parent


def package_file(package: str, suite: str, member: str, *, cache: Path | None = None) -> Path:
    """The file `member` of Debian `package` (the newest `suite` has), unpacked into the cache on first use;
    later calls find it through `<cache>/<package>_<suite>.json` without asking the archive."""
    cache = cache or cache_dir()
    manifest = cache / f"{package}_{suite}.json"
    if (path := _load_package_file(manifest)) is not None:
        return path
    with _locked(cache):
        if (path := _load_package_file(manifest)) is not None:
            return path
        archive = _Archive(cache)
        version = archive.pick(package, suite)
        path = archive.unpacked(package, version, suite) / member
        if not path.is_file():
            raise TestbedError(f"{package} {version} has no /{member}; the package layout changed")
        _write_atomic(manifest, json.dumps({"version": version, "path": str(path)}))
        return path


def cached_package_file(package: str, suite: str, *, cache: Path | None = None) -> Path | None:
    """The file package_file() unpacked earlier, or None: never asks the archive."""
    return _load_package_file((cache or cache_dir()) / f"{package}_{suite}.json")


def archive_source(
    sources_list: Path = Path("/etc/apt/sources.list"),
    sources_dir: Path = Path("/etc/apt/sources.list.d"),
    codename: str | None = None,
) -> tuple[str, str | None]:
    """(archive URI, signed-by keyring or None) of the machine's main Debian archive.

    The main archive is the source serving the machine's own release (its bare codename, with the
    `main` component): that rules out `-security`, `-updates`-only and third-party sources.
    """
    codename = codename or _os_codename()
    entries = list(_one_line_entries(sources_list))
    for path in sorted(sources_dir.glob("*.list")):
        entries.extend(_one_line_entries(path))
    for path in sorted(sources_dir.glob("*.sources")):
        entries.extend(_deb822_entries(path))
    for entry in entries:
        if codename in entry.suites and "main" in entry.components:
            return entry.uri, entry.signed_by
    raise TestbedError(
        f"no apt source serves Debian {codename!r} main (looked in {sources_list} and {sources_dir}); "
        "add the Debian archive to the machine's apt sources"
    )


# --- apt, privately --------------------------------------------------------------------------------


class _Archive:
    """apt-get against one suite at a time, with state kept under the cache."""

    def __init__(self, cache: Path) -> None:
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise TestbedError(
                "apt-get/dpkg-deb not found: the testbed fetches containerd from Debian's archive; "
                f"run on Debian, or copy a filled cache to {cache}"
            )
        self.cache = cache
        self.uri, self.signed_by = archive_source()
        self._updated: set[str] = set()

    def pick(self, package: str, suite: str, *, prefer: str | None = None, series: str | None = None) -> str:
        """The Debian version to use: upstream `prefer` if the suite has it, else its newest in `series`."""
        versions = self._versions(package, suite)
        if series is not None:
            versions = [v for v in versions if _upstream(v).startswith(series + ".")]
        preferred = [v for v in versions if _upstream(v) == prefer]
        chosen = (preferred or versions)[:1]
        if not chosen:
            wanted = f"{package} {series or ''}".strip()
            raise TestbedError(f"{wanted} not found in {suite} at {self.uri}; the archive no longer has it")
        return chosen[0]

    def unpacked(self, package: str, version: str, suite: str) -> Path:
        target = self.cache / "unpacked" / f"{package}_{_quote(version)}"
        if target.is_dir():
            return target
        deb = self._download(package, version, suite)
        with _atomic_dir(target) as tmp:
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], what=f"unpacking {deb.name}")
        return target

    def _download(self, package: str, version: str, suite: str) -> Path:
        deb = self.cache / "debs" / f"{package}_{_quote(version)}.deb"
        if deb.is_file():
            return deb
        self._update(suite)
        deb.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=deb.parent, prefix=".tmp-") as tmp:
            self._apt("apt-get", suite, "download", f"{package}={version}", cwd=Path(tmp))
            (got,) = Path(tmp).glob("*.deb")
            os.rename(got, deb)  # the emptied temp dir is removed on exit
        return deb

    def _versions(self, package: str, suite: str) -> list[str]:
        """Versions the suite offers, newest first (madison's order)."""
        self._update(suite)
        out = self._apt("apt-cache", suite, "madison", package)
        return [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2]

    def _update(self, suite: str) -> None:
        if suite in self._updated:
            return
        state = self.cache / "apt" / suite
        for sub in ("lists/partial", "cache/archives/partial"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        options = f"[signed-by={self.signed_by}] " if self.signed_by else ""
        (state / "sources.list").write_text(f"deb {options}{self.uri} {suite} main\n")
        # --error-on=any: without it a network failure is only a warning and apt exits 0.
        self._apt("apt-get", suite, "update", "--error-on=any")
        self._updated.add(suite)

    def _apt(self, tool: str, suite: str, *args: str, cwd: Path | None = None) -> str:
        state = self.cache / "apt" / suite
        cmd = [
            tool,
            "-q",
            f"-oDir::Etc::SourceList={state / 'sources.list'}",
            "-oDir::Etc::SourceParts=/dev/null",
            f"-oDir::State::Lists={state / 'lists'}",
            f"-oDir::Cache={state / 'cache'}",
            # Downloads land in root-owned cache dirs, which apt's _apt sandbox user cannot write.
            "-oAPT::Sandbox::User=root",
            *args,
        ]
        return _run(cmd, what=f"{tool} {args[0]} ({suite} at {self.uri})", cwd=cwd)


def _run(cmd: list[str], *, what: str, cwd: Path | None = None) -> str:
    env = dict(os.environ, LC_ALL="C")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("E:")] or lines[-1:] or ["no output"]
        raise TestbedError(
            f"{what} failed: {errors[0]}; check that the Debian archive is reachable, "
            "or fill the cache on a connected machine with `python -m testbed fetch`"
        )
    return proc.stdout


# --- cache bookkeeping ---------------------------------------------------------------------------


@contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """Serialise fetches between processes (two pytest sessions, or pytest and `fetch`)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp dir beside `target`; rename it to `target` on success, remove it on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        yield tmp
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_runtime(target: Path) -> Runtime | None:
    try:
        data = json.loads((target / "runtime.json").read_text())
    except FileNotFoundError:
        return None
    runtime = Runtime(**{**data, "bin_dir": Path(data["bin_dir"])})
    wanted = (*_CONTAINERD_BINARIES, "runc")
    if not all((runtime.bin_dir / name).exists() for name in wanted):
        raise TestbedError(f"cached runtime {target} is incomplete: delete it and fetch again")
    return runtime


def _publish_runtime(target: Path, runtime: Runtime, links: dict[str, Path]) -> None:
    """Build the bin dir and its manifest aside, then rename it into place."""
    with _atomic_dir(target) as tmp:
        (tmp / "bin").mkdir()
        for name, source in links.items():
            if not source.is_file():
                raise TestbedError(f"{source} is missing: the {name} package layout changed")
            # Relative links keep the cache relocatable ($NRI_OPTIMIZER_CACHE may be copied around).
            (tmp / "bin" / name).symlink_to(os.path.relpath(source, target / "bin"))
        data = {**asdict(runtime), "bin_dir": str(runtime.bin_dir)}
        (tmp / "runtime.json").write_text(json.dumps(data, indent=2) + "\n")


def _load_package_file(manifest: Path) -> Path | None:
    try:
        path = Path(json.loads(manifest.read_text())["path"])
    except FileNotFoundError:
        return None
    return path if path.is_file() else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_text(text)
    os.rename(tmp, path)


def _upstream(debian_version: str) -> str:
    """'1:2.1.9+ds1-5' -> '2.1.9': drop epoch, Debian revision and repack suffixes."""
    version = debian_version.split(":", 1)[-1]
    return re.split(r"[-+~]", version, maxsplit=1)[0]


def _quote(version: str) -> str:
    # An epoch's ':' is awkward in file names (and in PATH entries); apt itself writes it as %3a.
    return version.replace(":", "%3a")


# --- apt sources parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    signed_by: str | None


def _os_codename(os_release: Path = Path("/etc/os-release")) -> str:
    for line in os_release.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "VERSION_CODENAME" and value:
            return value.strip().strip('"')
    raise TestbedError(f"{os_release} has no VERSION_CODENAME: cannot tell which apt source is Debian's")


def _one_line_entries(path: Path) -> Iterator[_Source]:
    """`deb [opt=v ...] uri suite component...` lines of a classic sources.list."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.fullmatch(r"deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)", line)
        if not match:
            continue
        options = dict(opt.partition("=")[::2] for opt in (match[1] or "").split())
        yield _Source(match[2], (match[3],), tuple(match[4].split()), options.get("signed-by"))


def _deb822_entries(path: Path) -> Iterator[_Source]:
    """Stanzas of a deb822 .sources file (continuation lines are folded, comments dropped)."""
    for stanza in re.split(r"\n\s*\n", path.read_text()):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1].isspace() and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
            continue
        signed_by = fields.get("signed-by", "")
        # Signed-By may also hold an inline key block; only a keyring path can go on a one-line entry.
        keyring = signed_by if signed_by.startswith("/") and "\n" not in signed_by else None
        suites = tuple(fields.get("suites", "").split())
        components = tuple(fields.get("components", "").split())
        for uri in fields.get("uris", "").split():
            yield _Source(uri, suites, components, keyring)
