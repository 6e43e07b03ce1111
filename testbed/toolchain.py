"""The nydus tool chain, installed by name from the registries into the testbed cache (`make nydus`).

- nydusd, nydus-image, nydusctl: the crate nydus-rs 2.2.0, ``cargo install --locked``, into
  ``<cache>/tools/nydus-rs-2.2.0/bin`` (where nri_optimizer.nydus.tool looks);
- crictl: the Go module ``sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0``, ``go install``, into
  ``<cache>/tools/crictl-v1.37.0/bin``;
- containerd-nydus-grpc: Debian sid's nydus-snapshotter 0.13.4 (testbed.nydus.debian_snapshotter);
- docker-registry: Debian bookworm's (testbed.registry.registry_binary);
- referrers-registry: a registry with the OCI 1.1 referrers API, our own main (testbed/go/referrers-registry) on
  go-containerregistry's ``pkg/registry`` (its referrers option on), ``go build`` with the modules from the Go module
  proxy, into ``<cache>/tools/referrers-registry-<hash of its source>/bin`` (about 90 s the first time). The registries
  that install by name here answer 404 to the referrers API (docker-registry 2.8, distribution v3.1.2, ``crane
  registry serve``), and zot and olareg are not on the proxy (as verified when this was written).

Each is installed once; after that it is found in the cache without any network. nydusify has no entry: the Go
module proxy refuses every nydusify module path and version (HTTP 403), so ``nri-optimizer convert`` builds nydus
images with nydus-image itself (nri_optimizer.nydus).

nydus-rs: ``--locked`` because its published Cargo.lock is the dependency set that builds (without it the FUSE
crates drift to incompatible versions); run from a folder without a ``rust-toolchain`` file, since the crate pins
a toolchain that cannot be downloaded here. It vendors OpenSSL and zlib-ng, so it needs perl, make, cmake and a C
compiler. The first build takes 7-9 minutes on 2 cores; cargo's registry (CARGO_HOME) and the Go module and build
caches stay under the cache too, so a rebuild downloads nothing again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from nri_optimizer.nydus import tool as nydus_tool
from testbed import TestbedError, debs, nydus, registry

NYDUS_RS_VERSION = nydus_tool.NYDUS_RS_VERSION
NYDUS_RS_BINARIES = ("nydusd", "nydus-image", "nydusctl")
CRICTL_MODULE = "sigs.k8s.io/cri-tools/cmd/crictl"
CRICTL_VERSION = "v1.37.0"
REFERRERS_REGISTRY_SOURCE = Path(__file__).resolve().parent / "go" / "referrers-registry"
PROGRESS_EVERY = 30.0  # seconds between progress lines of a long build
BUILD_RECORD = "build.json"  # beside bin/: how long the build took, for the record
_LOG_TAIL = 40  # lines of a failed build's log shown in the error


def nydus_rs_root(cache: Path | None = None) -> Path:
    """cargo's --root: binaries in its bin/ (the directory nri_optimizer.nydus.tool looks in)."""
    return (cache or debs.cache_dir()) / "tools" / f"nydus-rs-{NYDUS_RS_VERSION}"


def crictl_root(cache: Path | None = None) -> Path:
    return (cache or debs.cache_dir()) / "tools" / f"crictl-{CRICTL_VERSION}"


def referrers_registry_root(cache: Path | None = None) -> Path:
    """Named by a hash of the source (main.go, go.mod, go.sum): a change to any of them builds anew."""
    digest = hashlib.sha256()
    for name in ("main.go", "go.mod", "go.sum"):
        digest.update((REFERRERS_REGISTRY_SOURCE / name).read_bytes())
    return (cache or debs.cache_dir()) / "tools" / f"referrers-registry-{digest.hexdigest()[:12]}"


@dataclass(frozen=True)
class Installed:
    name: str
    paths: tuple[Path, ...]
    seconds: float | None  # how long the build took (now or when it was cached), None if unknown

    @property
    def bin_dir(self) -> Path:
        return self.paths[0].parent


def nydus_rs(*, cache: Path | None = None, progress: Callable[[str], None] | None = None) -> Installed:
    """nydusd, nydus-image and nydusctl, built with cargo on first use."""
    root = nydus_rs_root(cache)
    return _installed_once(f"nydus-rs {NYDUS_RS_VERSION}", root, NYDUS_RS_BINARIES, _build_nydus_rs, cache, progress)


def crictl(*, cache: Path | None = None, progress: Callable[[str], None] | None = None) -> Installed:
    """crictl, built with go install on first use."""
    root = crictl_root(cache)
    return _installed_once(f"crictl {CRICTL_VERSION}", root, ("crictl",), _build_crictl, cache, progress)


def referrers_registry(*, cache: Path | None = None, progress: Callable[[str], None] | None = None) -> Installed:
    """The registry with the referrers API, built with go build on first use."""
    root = referrers_registry_root(cache)
    return _installed_once(
        "referrers-registry", root, ("referrers-registry",), _build_referrers_registry, cache, progress
    )


@dataclass(frozen=True)
class Toolchain:
    nydus_rs: Installed  # nydusd, nydus-image, nydusctl
    crictl: Installed
    snapshotter: Path  # containerd-nydus-grpc
    registry: Path  # docker-registry
    referrers_registry: Installed

    @property
    def nydusd(self) -> Path:
        return self.nydus_rs.bin_dir / "nydusd"

    @property
    def nydus_image(self) -> Path:
        return self.nydus_rs.bin_dir / "nydus-image"


def install(*, cache: Path | None = None, progress: Callable[[str], None] | None = None) -> Toolchain:
    """Everything the nydus path needs, each installed on first use (what `make nydus` runs)."""
    return Toolchain(
        nydus_rs(cache=cache, progress=progress),
        crictl(cache=cache, progress=progress),
        nydus.debian_snapshotter(cache=cache),
        registry.registry_binary(cache=cache),
        referrers_registry(cache=cache, progress=progress),
    )


def cargo_command(root: Path) -> list[str]:
    """What `make nydus` runs for nydus-rs (shown in errors, so a user can run it by hand)."""
    return ["cargo", "install", "--locked", "nydus-rs", "--version", NYDUS_RS_VERSION, "--root", str(root)]


def go_command() -> list[str]:
    return ["go", "install", f"{CRICTL_MODULE}@{CRICTL_VERSION}"]


# --- building ------------------------------------------------------------------------------------


Builder = Callable[[Path, Path, Path, Callable[[str], None]], None]  # (staging root, cache, build log, progress)


def _installed_once(
    name: str,
    root: Path,
    binaries: Sequence[str],
    build: Builder,
    cache: Path | None,
    progress: Callable[[str], None] | None,
) -> Installed:
    cache = cache or debs.cache_dir()
    say = progress or _stderr
    if (found := _load(name, root, binaries)) is not None:
        return found
    with debs._locked(cache / "tools"):  # one build at a time; a second process waits and then finds it
        if (found := _load(name, root, binaries)) is not None:
            return found
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{root.name}-", dir=root.parent))
        try:
            started = time.monotonic()
            build(staging, cache, root.with_name(f"{root.name}.build.log"), say)
            seconds = round(time.monotonic() - started, 1)
            missing = [b for b in binaries if not (staging / "bin" / b).is_file()]
            if missing:
                raise TestbedError(f"{name}: the build finished without {', '.join(missing)}")
            (staging / BUILD_RECORD).write_text(json.dumps({"seconds": seconds}) + "\n")
            if root.exists():  # an incomplete earlier install: replaced whole
                shutil.rmtree(root)
            os.rename(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        say(f"{name}: built in {_minutes(seconds)}, in {root / 'bin'}")
        return Installed(name, tuple(root / "bin" / b for b in binaries), seconds)


def _load(name: str, root: Path, binaries: Sequence[str]) -> Installed | None:
    paths = tuple(root / "bin" / b for b in binaries)
    if not all(p.is_file() and os.access(p, os.X_OK) for p in paths):
        return None
    try:
        seconds: float | None = float(json.loads((root / BUILD_RECORD).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        seconds = None  # installed by hand with the same command: as good
    return Installed(name, paths, seconds)


def _build_nydus_rs(staging: Path, cache: Path, log: Path, say: Callable[[str], None]) -> None:
    cargo = _require("cargo", "Rust's cargo (rustup, or Debian's cargo package)")
    for tool in ("perl", "make", "cmake", "cc"):  # OpenSSL's and zlib-ng's vendored builds
        _require(tool, f"{tool} (Debian: apt-get install perl make cmake gcc pkg-config)")
    env = dict(
        os.environ, CARGO_HOME=str(cache / "cargo-home"), CARGO_TERM_COLOR="never", CARGO_TERM_PROGRESS_WHEN="never"
    )
    env.pop("RUSTUP_TOOLCHAIN", None)
    say(
        f"nydus-rs {NYDUS_RS_VERSION}: building with cargo, once (7-9 min on 2 cores); "
        f"{shlex.join(cargo_command(nydus_rs_root(cache)))}"
    )
    # The working directory holds no rust-toolchain file, so rustup uses the default toolchain.
    argv = [cargo, *cargo_command(staging)[1:]]
    _run_logged(argv, env, log, "nydus-rs", say, counts=("Compiling ", "crates compiled"))


def _build_crictl(staging: Path, cache: Path, log: Path, say: Callable[[str], None]) -> None:
    go = _require("go", "Go (https://go.dev/dl, or Debian's golang-go)")
    env = _go_env(cache, GOBIN=str(staging / "bin"))
    say(f"crictl {CRICTL_VERSION}: building with go install, once (about 1 min); {shlex.join(go_command())}")
    _run_logged([go, *go_command()[1:]], env, log, "crictl", say, counts=None)


def _build_referrers_registry(staging: Path, cache: Path, log: Path, say: Callable[[str], None]) -> None:
    go = _require("go", "Go (https://go.dev/dl, or Debian's golang-go)")
    # go.sum is ours, checked in: -mod=readonly builds exactly the modules it names, or fails.
    env = _go_env(cache, GOFLAGS="-modcacherw -mod=readonly")
    say("referrers-registry: building with go build, once (about 1 min)")
    _run_logged(
        [go, "build", "-C", str(REFERRERS_REGISTRY_SOURCE), "-o", str(staging / "bin" / "referrers-registry"), "."],
        env,
        log,
        "referrers-registry",
        say,
        counts=None,
    )


def _go_env(cache: Path, **extra: str) -> dict[str, str]:
    """Go's module and build caches under ours, with the Go that is installed (no toolchain download)."""
    gopath = cache / "go"
    return (
        dict(
            os.environ,
            GOPATH=str(gopath),
            GOMODCACHE=str(gopath / "mod"),
            GOCACHE=str(gopath / "build"),
            GOFLAGS="-modcacherw",
            GOTOOLCHAIN="local",
        )
        | extra
    )


@dataclass
class _Progress:
    done: int = 0  # steps done so far (cargo: crates compiled)
    last: str = ""  # the build's last line


def _run_logged(
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    name: str,
    say: Callable[[str], None],
    counts: tuple[str, str] | None,
) -> None:
    """Run a long build with its output in `log_path`, saying every PROGRESS_EVERY s how far it got (a steady
    beat: one crate can take minutes); a failure is a TestbedError with the log's tail. The log is removed after a
    success. `counts`: (the line prefix of a step done, what to call the steps)."""
    started = time.monotonic()
    progress = _Progress()

    def read(stream: IO[str], log: IO[str]) -> None:
        for line in stream:
            log.write(line)
            if counts is not None and line.lstrip().startswith(counts[0]):
                progress.done += 1
            progress.last = line.strip()[:80]

    with tempfile.TemporaryDirectory(prefix="nriopt-build-") as cwd, open(log_path, "w") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        reader = threading.Thread(target=read, args=(proc.stdout, log), daemon=True)
        reader.start()
        while True:
            try:
                status = proc.wait(PROGRESS_EVERY)
                break
            except subprocess.TimeoutExpired:
                so_far = f"{progress.done} {counts[1]}, " if counts is not None else ""
                say(f"{name}: {so_far}{_minutes(time.monotonic() - started)} so far ({progress.last})")
        reader.join()
    if status != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL:])
        raise TestbedError(f"{shlex.join(argv)} failed (exit status {status}); full log in {log_path}:\n{tail}")
    log_path.unlink()


def _require(tool: str, what: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise TestbedError(f"{tool} not found on PATH: `make nydus` needs {what}")
    return found


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:02.0f} s" if seconds >= 60 else f"{seconds:.1f} s"


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
