"""A Debian root filesystem made from the archive's packages, as the realistic workloads' base.

The package set is closed over with apt's own resolver (a simulated install on an empty dpkg status, with
every `Priority: required` package, as debootstrap's minbase has), downloaded once into the cache and unpacked
with `dpkg-deb` into a merged-/usr tree. Maintainer scripts do not run: `configure()` does what they would have
done that every image needs (accounts, /var/run, the linker cache), and each app does the rest itself, with the
packages' own tools where they have one (`run_in` runs them chrooted in the tree, in private namespaces).

Cache layout, under testbed.debs.cache_dir()/apps (every entry appears atomically):

    apt/                  private apt state for SUITE (sources, lists, an empty dpkg status)
    apt/resolved/         the package set resolved for each request and state of the lists
    debs/                 downloaded .deb files, so that a second build is offline
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from testbed import TestbedError, debs

# The images are Debian 12 whatever the build machine runs: its python3.11 is the ABI the Python app's wheels
# are chosen for, and its php8.2 and nodejs 18 what the apps were checked against.
SUITE = "bookworm"
# The merged-/usr layout every Debian 12 system has (the `usrmerge` conversion, which we do not run).
MERGED_DIRS = ("bin", "lib", "lib64", "sbin")
# Documentation nothing reads at run time, dropped as Debian's own slim images drop it (dpkg path-exclude).
EXCLUDED = ("./usr/share/doc/*", "./usr/share/man/*", "./usr/share/info/*", "./usr/share/lintian/*")

_INST = re.compile(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)", re.MULTILINE)


@dataclass(frozen=True, order=True)
class Package:
    name: str
    version: str
    arch: str

    @property
    def filename(self) -> str:
        # apt-get download's own name for it (an epoch's ':' written as %3a).
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def apps_cache() -> Path:
    return debs.cache_dir() / "apps"


def resolve(packages: Iterable[str], *, cache: Path | None = None) -> list[Package]:
    """The packages to unpack for `packages`: their closure with the required set, without recommends."""
    apt = _Apt(cache or apps_cache())
    return apt.resolve(sorted(packages))


def download(packages: Sequence[Package], *, cache: Path | None = None) -> list[Path]:
    """The .deb of each package, downloading the missing ones in one apt-get call."""
    apt = _Apt(cache or apps_cache())
    return apt.download(packages)


def unpack(deb_files: Iterable[Path], root: Path) -> None:
    """`dpkg-deb` each package into `root`, a merged-/usr tree (its /bin a link to usr/bin, and so on)."""
    for name in MERGED_DIRS:
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    tar = ["tar", "-x", "--keep-directory-symlink", *(f"--exclude={p}" for p in EXCLUDED), "-C", str(root)]
    for deb in sorted(deb_files):
        # dpkg-deb -x would replace the /bin link with a directory: GNU tar keeps it (--keep-directory-symlink).
        with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as data:
            untar = subprocess.run(tar, stdin=data.stdout, capture_output=True, text=True, check=False)
        if data.returncode or untar.returncode:
            raise TestbedError(
                f"unpacking {deb} failed: {untar.stderr.strip() or 'dpkg-deb failed'}; "
                "delete it from the cache and build again"
            )


def configure(
    root: Path, *, alternatives: Mapping[str, str] | None = None, users: Sequence[str] = (), groups: Sequence[str] = ()
) -> None:
    """What the maintainer scripts of the base system would have done, and that every image relies on.

    `alternatives` maps a command (`/usr/bin/awk`) to the program update-alternatives would pick (`mawk`);
    `users` and `groups` are /etc/passwd and /etc/group lines of the system accounts the app's packages create.
    """
    # base-passwd's postinst installs its master files as the first /etc/passwd and /etc/group.
    master = root / "usr/share/base-passwd"
    passwd = (master / "passwd.master").read_text() + "".join(f"{line}\n" for line in users)
    group = (master / "group.master").read_text() + "".join(f"{line}\n" for line in groups)
    (root / "etc/passwd").write_text(passwd)
    (root / "etc/group").write_text(group)
    # base-files' postinst turns /var/run and /var/lock into links to /run.
    for path, target in (("var/run", "/run"), ("var/lock", "/run/lock")):
        shutil.rmtree(root / path)
        (root / path).symlink_to(target)
    (root / "run/lock").mkdir(mode=0o1777, parents=True, exist_ok=True)
    os.chmod(root / "run/lock", 0o1777)
    # base-files' and libc-bin's postinsts install these from their defaults; /etc/hosts is debootstrap's,
    # so that `localhost` resolves at build time too (at run time the runtime mounts its own).
    defaults = {
        "etc/profile": "usr/share/base-files/profile",
        "root/.profile": "usr/share/base-files/dot.profile",
        "root/.bashrc": "usr/share/base-files/dot.bashrc",
        "etc/nsswitch.conf": "usr/share/libc-bin/nsswitch.conf",
    }
    for path, default in defaults.items():
        shutil.copyfile(root / default, root / path)
    for local in ("bin", "etc", "include", "lib", "sbin", "share", "src"):
        (root / "usr/local" / local).mkdir(parents=True, exist_ok=True)
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    for command, program in sorted((alternatives or {}).items()):
        name = Path(command).name
        link = root / command.lstrip("/")
        link.unlink(missing_ok=True)
        link.symlink_to(f"/etc/alternatives/{name}")
        (root / "etc/alternatives").mkdir(exist_ok=True)
        (root / "etc/alternatives" / name).symlink_to(program)
    # libc-bin's trigger: the linker cache (the loader finds the multiarch dirs without it, but slower). Not its
    # aux-cache, which records the build tree's inodes and times: only a later ldconfig reads it, and without it
    # the same packages give the same image.
    run_in(root, "ldconfig && rm /var/cache/ldconfig/aux-cache", what="ldconfig in the image")


def run_in(root: Path, script: str, *, binds: Mapping[Path, str] | None = None, what: str) -> str:
    """Run `script` with /bin/sh chrooted in `root`: own mount, pid and network namespaces, so that nothing it
    mounts or starts outlives it and it reaches no network; /dev and /proc are mounted, `binds` (host dir ->
    path in root) bound read-only."""
    mounts = [f"mount --rbind /dev {_q(root / 'dev')}", f"mount -t proc proc {_q(root / 'proc')}"]
    for source, target in sorted((binds or {}).items()):
        (root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
        mounts.append(f"mount --bind -o ro {_q(source)} {_q(root / target.lstrip('/'))}")
    outer = "; ".join([*mounts, f"exec chroot {_q(root)} /bin/sh -ec {_q(script)}"])
    try:
        return _run(
            ["unshare", "--mount", "--pid", "--net", "--fork", "--propagation", "private", "sh", "-ec", outer],
            what=what,
        )
    finally:
        for target in (binds or {}).values():
            # The mount point made above; empty again now that the namespace is gone.
            (root / target.lstrip("/")).rmdir()


class _Apt:
    """apt-get on SUITE with private state: no dpkg status, so that it resolves a whole system."""

    def __init__(self, cache: Path) -> None:
        self.state = cache / "apt"
        self.debs = cache / "debs"

    def resolve(self, packages: list[str]) -> list[Package]:
        if not any((self.state / "lists").glob("*_Packages*")):
            self._update()
        # The answer depends only on the request and the lists (named by their signed Release file): kept, it
        # spares a cached build apt's seconds of solving.
        release = b"".join(path.read_bytes() for path in sorted((self.state / "lists").glob("*Release")))
        key = hashlib.sha256(json.dumps(packages).encode() + release).hexdigest()[:16]
        saved = self.state / "resolved" / f"{key}.json"
        if saved.is_file():
            return [Package(*fields) for fields in json.loads(saved.read_text())]
        out = self._apt("apt-get", "install", "--simulate", "--no-install-recommends", "?priority(required)", *packages)
        resolved = sorted(Package(*match) for match in _INST.findall(out))
        saved.parent.mkdir(exist_ok=True)
        tmp = saved.with_name(f".tmp-{saved.name}")
        tmp.write_text(json.dumps([[p.name, p.version, p.arch] for p in resolved]))
        os.rename(tmp, saved)
        return resolved

    def download(self, packages: Sequence[Package]) -> list[Path]:
        missing = [p for p in packages if not (self.debs / p.filename).is_file()]
        if missing:
            self.debs.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.debs, prefix=".tmp-") as tmp:
                try:
                    self._apt("apt-get", "download", *(f"{p.name}={p.version}" for p in missing), cwd=Path(tmp))
                except TestbedError as error:
                    # The lists are read once and kept: a point release since may have replaced a version.
                    raise TestbedError(
                        f"{error}; if the archive no longer has these versions, delete "
                        f"{self.state} to read its lists anew"
                    ) from None
                for package in missing:
                    got = Path(tmp) / package.filename
                    if not got.is_file():
                        raise TestbedError(
                            f"apt-get download gave no {package.filename}: the archive's "
                            f"naming changed; delete {self.state} and build again"
                        )
                    os.rename(got, self.debs / package.filename)
        return [self.debs / p.filename for p in packages]

    def _update(self) -> None:
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        uri, signed_by = debs.archive_source()
        options = f"[signed-by={signed_by}] " if signed_by else ""
        (self.state / "sources.list").write_text(f"deb {options}{uri} {SUITE} main\n")
        (self.state / "status").write_text("")
        # --error-on=any: without it a network failure is only a warning and apt exits 0.
        self._apt("apt-get", "update", "--error-on=any")

    def _apt(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        return _run(
            [
                tool,
                "-q",
                f"-oDir::Etc::SourceList={self.state / 'sources.list'}",
                "-oDir::Etc::SourceParts=/dev/null",
                f"-oDir::State::Lists={self.state / 'lists'}",
                f"-oDir::State::status={self.state / 'status'}",
                f"-oDir::Cache={self.state / 'cache'}",
                "-oAPT::Sandbox::User=root",  # root-owned cache dirs, which apt's _apt user cannot write
                *args,
            ],
            what=f"{tool} {args[0]} ({SUITE})",
            cwd=cwd,
        )


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _run(cmd: list[str], *, what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, LC_ALL="C"), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "; ".join([ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-5:])
        raise TestbedError(f"{what} failed (exit {proc.returncode}): {tail or 'no output'}")
    return proc.stdout
