"""Building nydus images with the real nydus-image 2.2.0: the same image converted with the list and with the list
but the layers left in their order.

What is compared, and how it is read:
- each layer's file tree: ``nydus-image unpack --bootstrap LAYER.boot --blob BLOB`` writes the tree back as a tar
  from the bootstrap and the blob's data (every path, type, mode, owner, size, mtime, link, xattr, content
  digest), compared with the other build's and with the layer tar itself. 2.2.0's unpack takes one blob (with
  ``--backend-config`` it asks its backend for a blob named "unpacker"), so it reads each layer's own bootstrap;
- the image's merged tree: ``nydus-image check --verbose`` (every path, kind, size, nlink, mtime, symlink, the
  digests of its chunks) and, as root, the image mounted by nydusd from the OCI layout's blobs (lstat, readlink,
  xattrs and the content of every file), which also shows that the merged bootstrap names the blobs by the
  digests the manifest gives them;
- the prefetch table: ``nydus-image inspect -R prefetch``, by inode (a hard-linked file appears under its first
  name there);
- where the listed files' chunks are in each blob: ``check --verbose``'s compressed offsets;
- last, the converted OCI image pushed to a registry and run by nydus-snapshotter 0.13.4 and the real nydusd
  through CRI, on containerd 2.1 and 1.7.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from benchmarks.prefetch import workloads
from benchmarks.prefetch.config import Image, Ready, Variant
from benchmarks.prefetch.handlers import HandlerCri
from benchmarks.prefetch.runner import Runner
from nri_optimizer.errors import ToolError
from nri_optimizer.nydus import bootstrap, build, image, tool
from nri_optimizer.nydus.tarorder import normalise
from nri_optimizer.oci import layout
from nri_optimizer.oci.registry import OCI_MANIFEST
from testbed import TestbedError, debs
from testbed import nydus as testbed_nydus
from testbed.containerd import Containerd
from testbed.images import build_pause_image
from testbed.registry import LocalRegistry, registry_binary, write_hosts

MiB = 1 << 20
_rng = random.Random(20)  # content that neither compresses nor repeats: each chunk is stored once, at its place


def data(size: int) -> bytes:
    return _rng.randbytes(size)


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, content: bytes = b"", **attrs: Any
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime, info.mode = kind, len(content), 1_700_000_000, 0o644
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, content


def layer_tar(entries: Sequence[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, content in entries:
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return out.getvalue()


D = tarfile.DIRTYPE
BASE = [
    entry("etc/", D),
    entry("usr/", D),
    entry("usr/bin/", D),
    entry("usr/lib/", D),
    entry("var/", D),
    entry("opt/", D),
    entry("opt/old/", D),
    entry("usr/bin/app", content=data(300_000), mode=0o755, uid=1000, gid=1000),
    entry("usr/bin/app-link", tarfile.LNKTYPE, linkname="usr/bin/app", mode=0o755, uid=1000, gid=1000),
    entry("usr/bin/sh", tarfile.SYMTYPE, linkname="app", mode=0o777),
    entry("usr/lib/libsmall.so", content=data(10_000)),
    entry("usr/lib/libbig.so", content=data(2 * MiB + 500_000)),
    entry("etc/conf", content=b"setting = 1\n" * 100, pax_headers={"SCHILY.xattr.user.origin": "base"}),
    entry("etc/empty"),
    entry("etc/replaced", content=data(50_000)),
    entry("var/data", content=data(MiB + 300_000), mode=0o600),
    entry("var/gone", content=data(20_000)),
    entry("opt/old/file", content=data(30_000)),
]
UPPER = [
    entry("etc/", D),
    entry("etc/replaced", content=data(70_000), mode=0o640),
    entry("var/", D),
    entry("var/.wh.gone"),
    entry("opt/", D),
    entry("opt/old/", D),
    entry("opt/old/.wh..wh..opq"),
    entry("opt/old/new", content=data(5_000)),
    entry("usr/", D),
    entry("usr/lib/", D),
    entry("usr/lib/libnew.so", content=data(MiB + 200_000)),
]
METADATA_ONLY = [entry("usr/", D), entry("usr/lib/", D), entry("usr/lib/.wh.libsmall.so")]  # no file data: no blob

# In the order the container reads them (the plugin's list), with what nydus-image must make of each.
LISTED = [
    "/usr/bin/app-link",  # a hard link whose target is not listed: the data comes to its place
    "/etc/replaced",  # the upper layer's version counts
    "/usr/lib/libnew.so",
    "/var/data",
    "/missing",  # not in the image
    "/etc/empty",  # no data: nydus-image leaves it out of the table
    "/var/gone",  # deleted by the upper layer's whiteout
    "/usr/lib/libbig.so",
    "/opt/old/file",  # hidden by the upper layer's opaque directory
    "/etc/conf",
]
PREFETCH = ("/usr/bin/app-link", "/etc/replaced", "/usr/lib/libnew.so", "/var/data", "/usr/lib/libbig.so", "/etc/conf")


@pytest.fixture(scope="module")
def nydus_image() -> str:
    try:
        return tool.find()
    except ToolError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def layers(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("layers")
    paths = []
    for number, entries in enumerate([BASE, UPPER, METADATA_ONLY]):
        path = out / f"layer-{number}.tar"
        path.write_bytes(layer_tar(entries))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def builds(
    layers: list[Path], nydus_image: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, build.ImageBuild]:
    """The image built with the list, its layers reordered ("ordered") and as they were ("unordered")."""
    return {
        name: build.build_image(
            layers, tmp_path_factory.mktemp(name), listed=LISTED, nydus_image=nydus_image, reorder=name == "ordered"
        )
        for name in ("ordered", "unordered")
    }


def test_the_list_is_sorted_out_as_the_image_has_it(builds: dict[str, build.ImageBuild]) -> None:
    for built in builds.values():
        assert built.prefetch == PREFETCH
        assert built.absent == ("/missing", "/var/gone", "/opt/old/file")
        assert built.empty == ("/etc/empty",)
        assert [layer.blob is not None for layer in built.layers] == [True, True, False]
    reports = [layer.order for layer in builds["ordered"].layers]
    assert [report.moved if report else None for report in reports] == [
        ("/usr/bin/app-link", "/var/data", "/usr/lib/libbig.so", "/etc/conf"),
        ("/etc/replaced", "/usr/lib/libnew.so"),
        (),
    ]
    assert [layer.order for layer in builds["unordered"].layers] == [None, None, None]


def test_each_blob_is_named_by_its_sha256(builds: dict[str, build.ImageBuild]) -> None:
    for blob in builds["ordered"].blobs + builds["unordered"].blobs:
        assert (
            blob.digest == "sha256:" + hashlib.sha256(blob.path.read_bytes()).hexdigest() == "sha256:" + blob.path.name
        )
        assert blob.size == blob.path.stat().st_size
    assert builds["ordered"].blobs[0].digest != builds["unordered"].blobs[0].digest  # the order is in the bytes


def test_the_prefetch_table_is_the_list_in_list_order(builds: dict[str, build.ImageBuild], nydus_image: str) -> None:
    for built in builds.values():
        inodes = bootstrap.inodes(built.bootstrap, nydus_image=nydus_image)
        table = bootstrap.prefetch_table(built.bootstrap, nydus_image=nydus_image)
        assert [entry.inode for entry in table] == [inodes[path].ino for path in PREFETCH]  # no {"inode": 0}
        assert bootstrap.prefetch_paths(table) == ["/usr/bin/app", *PREFETCH[1:]]  # app-link's inode, first name


def test_ordered_blobs_hold_the_listed_files_first_in_list_order(
    builds: dict[str, build.ImageBuild], nydus_image: str
) -> None:
    ordered = bootstrap.inodes(builds["ordered"].bootstrap, nydus_image=nydus_image)
    assert bootstrap.listed_chunks_contiguous_in_order(ordered, PREFETCH)
    heads = {path: [(chunk.blob_index, chunk.compressed_offset) for chunk in ordered[path].chunks] for path in PREFETCH}
    app, data_, big = 300_000, MiB + 300_000, 2 * MiB + 500_000  # stored as they are: random data does not shrink
    assert heads == {
        "/usr/bin/app-link": [(0, 0)],
        "/var/data": [(0, app), (0, app + MiB)],
        "/usr/lib/libbig.so": [(0, app + data_), (0, app + data_ + MiB), (0, app + data_ + 2 * MiB)],
        "/etc/conf": [(0, app + data_ + big)],
        "/etc/replaced": [(1, 0)],
        "/usr/lib/libnew.so": [(1, 70_000), (1, 70_000 + MiB)],
    }

    unordered = bootstrap.inodes(builds["unordered"].bootstrap, nydus_image=nydus_image)
    assert not bootstrap.listed_chunks_contiguous_in_order(unordered, PREFETCH)
    # In the tars' order the blobs go: app, libsmall, libbig, conf, replaced, data, ... and replaced, new, libnew.
    small, replaced, new = 10_000, 50_000, 5_000
    conf = unordered["/etc/conf"].chunks[0].compressed_size
    assert bootstrap.layout_breaks(unordered, PREFETCH) == [
        f"/usr/lib/libnew.so: chunk at file offset 0 is at blob 1 offset {70_000 + new}, expected 70000",
        f"/var/data: chunk at file offset 0 is at blob 0 offset {app + small + big + conf + replaced}, expected {app}",
        f"/usr/lib/libbig.so: chunk at file offset 0 is at blob 0 offset {app + small}, "
        f"expected {app + small + big + conf + replaced + data_}",
    ]  # (conf follows libbig there as in the list)


def test_files_left_on_demand_are_out_of_the_table_and_after_the_prefetched_in_the_blob(
    layers: list[Path], nydus_image: str, tmp_path: Path
) -> None:
    """/var/data read only in part (nri_optimizer.nydus.partial): nydusd does not prefetch it, and its chunks come
    right after the prefetched files' in its layer's blob, so those stay one run."""
    built = build.build_image(layers, tmp_path, listed=LISTED, nydus_image=nydus_image, on_demand=["/var/data"])
    prefetched = tuple(path for path in PREFETCH if path != "/var/data")
    assert (built.prefetch, built.on_demand) == (prefetched, ("/var/data",))
    table = bootstrap.prefetch_table(built.bootstrap, nydus_image=nydus_image)
    assert bootstrap.prefetch_paths(table) == ["/usr/bin/app", *prefetched[1:]]
    inodes = bootstrap.inodes(built.bootstrap, nydus_image=nydus_image)
    assert bootstrap.listed_chunks_contiguous_in_order(inodes, prefetched)
    app, big, conf = 300_000, 2 * MiB + 500_000, inodes["/etc/conf"].chunks[0].compressed_size
    assert [(c.blob_index, c.compressed_offset) for c in inodes["/var/data"].chunks] == [
        (0, app + big + conf),
        (0, app + big + conf + MiB),
    ]


def test_both_images_have_the_same_tree(builds: dict[str, build.ImageBuild], nydus_image: str) -> None:
    trees = {
        name: {
            path: _without_offsets(inode)
            for path, inode in bootstrap.inodes(built.bootstrap, nydus_image=nydus_image).items()
        }
        for name, built in builds.items()
    }
    assert trees["ordered"] == trees["unordered"]
    tree = trees["ordered"]
    assert {"/usr/lib/libsmall.so", "/var/gone", "/opt/old/file", "/missing"}.isdisjoint(tree)
    assert tree["/usr/bin/sh"] == ("/usr/bin/sh", "symlink", 1, 3, 1_700_000_000, "app", ())
    assert tree["/usr/bin/app-link"][:4] == ("/usr/bin/app-link", "hardlink", 2, 300_000)


ODD_NAMES = [
    'dir with space/"quoted" \\ back',
    "nl\nname",
    "tab\tname",
    "日本語",
    "emoji \U0001f389",
    "it's",
    "ctl\x01\x7f",
    "comb\u0301ining",
    "zw\u200bsp",
    b"\xff\xfe-not-utf-8".decode(errors="surrogateescape"),
]


def test_odd_names_read_back_as_they_are(nydus_image: str, tmp_path: Path) -> None:
    entries = [
        entry("dir with space/", D),
        entry("null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        entry("link", tarfile.SYMTYPE, linkname='to "odd"\n\\ \xff'),
        *(entry(name, content=data(1000)) for name in ODD_NAMES),
    ]
    layer = tmp_path / "odd.tar"
    with tarfile.open(layer, "w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as tar:
        for info, content in entries:
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    listed = [f"/{name}" for name in reversed(ODD_NAMES) if "\n" not in name and "\udcff" not in name]  # list-able
    built = build.build_image([layer], tmp_path, listed=listed, nydus_image=nydus_image)
    inodes = bootstrap.inodes(built.bootstrap, nydus_image=nydus_image)
    assert set(inodes) == {"/", "/dir with space", "/null", "/link", *(f"/{name}" for name in ODD_NAMES)}
    assert (inodes["/null"].kind, inodes["/link"].symlink) == ("", 'to "odd"\n\\ \xff')
    assert bootstrap.prefetch_paths(bootstrap.prefetch_table(built.bootstrap, nydus_image=nydus_image)) == listed
    assert bootstrap.listed_chunks_contiguous_in_order(inodes, listed)


def test_each_layer_has_the_same_files_as_its_tar(
    builds: dict[str, build.ImageBuild], layers: list[Path], nydus_image: str, tmp_path: Path
) -> None:
    for number, source in enumerate(layers):
        unpacked = {}
        for name, built in builds.items():
            layer = built.layers[number]
            out = tmp_path / f"{name}-{number}.tar"
            argv = [nydus_image, "unpack", "--bootstrap", str(layer.bootstrap), "--output", str(out)]
            tool.run([*argv, "--blob", str(layer.blob.path)] if layer.blob else argv)
            unpacked[name] = _tree(out)
        assert unpacked["ordered"] == unpacked["unordered"] == _tree(source)  # and the layer's own tree, exactly


@pytest.fixture(scope="module")
def converted(layers: list[Path], nydus_image: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The nydus image of an OCI layout of `layers`, as an OCI layout."""
    out = tmp_path_factory.mktemp("oci")
    done = image.convert_layout(
        _source_layout(out / "source", layers), out / "nydus", listed=LISTED, nydus_image=nydus_image
    )
    assert (done.build.prefetch, done.build.absent, done.build.empty) == (
        PREFETCH,
        ("/missing", "/var/gone", "/opt/old/file"),
        ("/etc/empty",),
    )
    assert [layer.order.moved if layer.order else None for layer in done.build.layers] == [
        ("/usr/bin/app-link", "/var/data", "/usr/lib/libbig.so", "/etc/conf"),
        ("/etc/replaced", "/usr/lib/libnew.so"),
        (),
    ]
    assert json.loads((out / "nydus" / "index.json").read_bytes())["manifests"] == [done.manifest]
    return out / "nydus"


def test_the_oci_image_is_what_nydus_snapshotter_runs(converted: Path, nydus_image: str, tmp_path: Path) -> None:
    blobs = converted / "blobs" / "sha256"
    index = json.loads((converted / "index.json").read_bytes())
    [descriptor] = index["manifests"]
    assert (descriptor["mediaType"], descriptor["annotations"]) == (
        OCI_MANIFEST,
        {"org.opencontainers.image.ref.name": "sample"},
    )
    manifest = json.loads((blobs / descriptor["digest"].removeprefix("sha256:")).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_bytes())
    data_layers, bootstrap_layer = manifest["layers"][:-1], manifest["layers"][-1]
    assert [(layer["mediaType"], layer["annotations"]) for layer in data_layers] == [
        ("application/vnd.oci.image.layer.nydus.blob.v1", {"containerd.io/snapshot/nydus-blob": "true"})
    ] * 2
    assert (bootstrap_layer["mediaType"], bootstrap_layer["annotations"]) == (
        "application/vnd.oci.image.layer.v1.tar+gzip",
        {"containerd.io/snapshot/nydus-bootstrap": "true", "containerd.io/snapshot/nydus-fs-version": "6"},
    )
    for layer in [manifest["config"], *manifest["layers"]]:
        content = (blobs / layer["digest"].removeprefix("sha256:")).read_bytes()
        assert ("sha256:" + hashlib.sha256(content).hexdigest(), len(content)) == (layer["digest"], layer["size"])
    boot_tar = gzip.decompress((blobs / bootstrap_layer["digest"].removeprefix("sha256:")).read_bytes())
    with tarfile.open(fileobj=io.BytesIO(boot_tar)) as tar:
        assert [(member.name, member.type, member.mode) for member in tar] == [
            ("image", tarfile.DIRTYPE, 0o755),
            ("image/image.boot", tarfile.REGTYPE, 0o444),
        ]
        (tmp_path / "image.boot").write_bytes(tar.extractfile("image/image.boot").read())  # type: ignore[union-attr]
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": [*(layer["digest"] for layer in data_layers), "sha256:" + hashlib.sha256(boot_tar).hexdigest()],
    }
    assert config["config"] == {"Entrypoint": ["/usr/bin/app"], "Env": ["A=1"]}
    assert config["history"] == [
        {"created_by": "base"},
        {"created_by": "upper"},
        {"created_by": "metadata", "empty_layer": True},
        {"created_by": "nri-optimizer convert", "comment": "Nydus Bootstrap Layer"},
    ]
    inodes = bootstrap.inodes(tmp_path / "image.boot", nydus_image=nydus_image)
    assert [entry.inode for entry in bootstrap.prefetch_table(tmp_path / "image.boot", nydus_image=nydus_image)] == [
        inodes[path].ino for path in PREFETCH
    ]
    assert bootstrap.listed_chunks_contiguous_in_order(inodes, PREFETCH)
    assert sorted(path.name for path in blobs.iterdir()) == sorted(  # nothing else left behind
        layer["digest"].removeprefix("sha256:") for layer in [descriptor, manifest["config"], *manifest["layers"]]
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting with nydusd (FUSE) needs root")
def test_the_oci_image_mounts_from_its_blobs_by_their_digests(converted: Path, nydusd: str, tmp_path: Path) -> None:
    boot = _image_boot(converted, tmp_path / "image.boot")
    with _mounted(nydusd, boot, converted / "blobs" / "sha256", tmp_path / "mnt") as root:
        assert (root / "usr/lib/libnew.so").read_bytes() == UPPER[-1][1]
        assert (root / "etc/replaced").read_bytes() == UPPER[1][1]
        assert (root / "usr/bin/app-link").read_bytes() == BASE[7][1]
        assert not (root / "var/gone").exists()
        assert not (root / "opt/old/file").exists()
        assert not (root / "usr/lib/libsmall.so").exists()
        assert sorted(os.listdir(root / "opt/old")) == ["new"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting with nydusd (FUSE) needs root")
def test_mounted_by_nydusd_both_images_read_the_same(
    builds: dict[str, build.ImageBuild], nydusd: str, tmp_path: Path
) -> None:
    trees = {}
    for name, built in builds.items():
        with _mounted(nydusd, built.bootstrap, built.blobs[0].path.parent, tmp_path / name) as root:
            trees[name] = _walk(root)
    assert trees["ordered"] == trees["unordered"]
    assert trees["ordered"]["/usr/bin/app"][:3] == (stat.S_IFREG | 0o755, 1000, 1000)
    assert trees["ordered"]["/etc/conf"][-1] == {"user.origin": b"base"}


# --- reading trees back ------------------------------------------------------------------------------------------


def _without_offsets(inode: bootstrap.Inode) -> tuple[object, ...]:
    """An inode of `check --verbose` without what the order changes: inode numbers and where chunks are."""
    return (
        inode.path,
        inode.kind,
        inode.nlink,
        inode.size,
        inode.mtime,
        inode.symlink,
        tuple(chunk.digest for chunk in inode.chunks),
    )


def _tree(tar_path: Path) -> dict[str, tuple[object, ...]]:
    tree: dict[str, tuple[object, ...]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            path = normalise(member.name)
            content = tar.extractfile(member).read() if member.isreg() else b""  # type: ignore[union-attr]
            xattrs = {k: v for k, v in member.pax_headers.items() if k.startswith("SCHILY.xattr.")}
            tree[path] = (
                member.type,
                stat.S_IMODE(member.mode),
                member.uid,
                member.gid,
                member.size,
                member.mtime,
                normalise(member.linkname) if member.islnk() else member.linkname,
                xattrs,
                hashlib.sha256(content).hexdigest(),
            )
    return tree


def _walk(root: Path) -> dict[str, tuple[object, ...]]:
    tree: dict[str, tuple[object, ...]] = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(directory) / name
            info = path.lstat()
            content = path.read_bytes() if stat.S_ISREG(info.st_mode) else b""
            xattrs = {
                key: os.getxattr(path, key, follow_symlinks=False) for key in os.listxattr(path, follow_symlinks=False)
            }
            tree["/" + str(path.relative_to(root))] = (
                info.st_mode,
                info.st_uid,
                info.st_gid,
                info.st_size,
                info.st_nlink,
                os.readlink(path) if path.is_symlink() else None,
                hashlib.sha256(content).hexdigest(),
                xattrs,
            )
    return tree


@pytest.fixture(scope="module")
def nydusd() -> str:
    try:
        return tool.find("nydusd")
    except ToolError as error:
        pytest.skip(str(error))


@contextmanager
def _mounted(nydusd: str, boot: Path, blob_dir: Path, mountpoint: Path) -> Iterator[Path]:
    """The image mounted by nydusd (FUSE) from a localfs backend; unmounted and stopped after."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}-nydusd.log"
    with open(log, "wb") as out:
        # --rlimit-nofile 0: nydusd raises RLIMIT_NOFILE to 1,000,000 by default, which root without
        # CAP_SYS_RESOURCE may not (NYDUS.md).
        proc = subprocess.Popen(
            [
                nydusd,
                "--rlimit-nofile",
                "0",
                "--log-level",
                "warn",
                "--bootstrap",
                str(boot),
                "--localfs-dir",
                str(blob_dir),
                "--mountpoint",
                str(mountpoint),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"nydusd did not mount {boot}: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _image_boot(layout_dir: Path, out: Path) -> Path:
    """The image's bootstrap, from the bootstrap layer of the one image in an OCI layout, into `out`."""
    blobs = layout_dir / "blobs" / "sha256"
    [descriptor] = json.loads((layout_dir / "index.json").read_bytes())["manifests"]
    manifest = json.loads((blobs / descriptor["digest"].removeprefix("sha256:")).read_bytes())
    with tarfile.open(blobs / manifest["layers"][-1]["digest"].removeprefix("sha256:")) as tar:
        out.write_bytes(tar.extractfile("image/image.boot").read())  # type: ignore[union-attr]
    return out


def _source_layout(out: Path, layers: Sequence[Path]) -> Path:
    """An OCI image layout of `layers` (gzipped), with a config and a history line per layer."""
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(content: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(content).hexdigest()
        (blobs / digest).write_bytes(content)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(content)}

    tars = [layer.read_bytes() for layer in layers]
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/usr/bin/app"], "Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(t).hexdigest()}" for t in tars]},
        "history": [{"created_by": "base"}, {"created_by": "upper"}, {"created_by": "metadata"}],
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": put(json.dumps(config).encode(), image.OCI_CONFIG),
        "layers": [put(gzip.compress(t, mtime=0), image.OCI_LAYER_GZIP) for t in tars],
    }
    descriptor = put(json.dumps(manifest).encode(), OCI_MANIFEST)
    descriptor["annotations"] = {image.REF_NAME: "sample"}
    (out / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [descriptor]}))
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return out


# --- run by nydus-snapshotter 0.13.4 -----------------------------------------------------------------------------

DB_LIST = ["/bin/busybox", "/app/start.sh", "/app/db.conf", "/app/data/schema.sql", "/app/data/table-0.bin"]


@pytest.mark.parametrize("flavour", ["2.1", "1.7"])
def test_nydus_snapshotter_runs_the_converted_image_prefetching_the_list(
    flavour: str, tmp_path: Path, runtime: Callable[[str], debs.Runtime], nydus_image: str, nydusd: str
) -> None:
    """Pushed to a plain-HTTP registry, pulled lazily through CRI on nydus-snapshotter (list mode, the real nydusd),
    the converted `db` workload starts; nydusd reads the image's blob from the registry and prefetches the list."""
    try:
        snapshotter_binary = testbed_nydus.debian_snapshotter()
    except TestbedError as error:
        pytest.fail(f"cannot get containerd-nydus-grpc from Debian: {error}")
    source = tmp_path / "source"
    with tarfile.open(workloads.build("db", "x/nydus-db:1", tmp_path / "db.tar")) as tar:
        tar.extractall(source, filter="data")
    done = image.convert_layout(source, tmp_path / "nydus", listed=DB_LIST, nydus_image=nydus_image)
    assert done.build.prefetch == tuple(DB_LIST) and done.build.absent == ()
    rt = runtime(flavour)
    snapshotter = testbed_nydus.NydusSnapshotter(
        snapshotter_binary, Path(nydusd), "list", testbed_nydus.Backend("http")
    )
    ctd = Containerd(
        rt, nri=False, registry_config_dir=tmp_path / "hosts", snapshotters={snapshotter.name: snapshotter.address}
    )
    registry = LocalRegistry(registry_binary())
    cri: HandlerCri | None = None
    try:
        snapshotter.start()
        ctd.start()
        pause = build_pause_image(tmp_path / "pause.tar")
        ctd.import_image(pause)
        testbed_nydus.import_image(rt.bin_dir / "ctr", ctd.address, pause, snapshotter.name)
        registry.start()
        write_hosts(tmp_path / "hosts", registry.address, plain_http=True)
        layout.push(tmp_path / "nydus", registry.client(), "nydus-db", "1_nydus")
        reference = f"{registry.address}/nydus-db:1_nydus"
        cri = HandlerCri(ctd.address)
        runner = Runner(cri, cgroup_parent=ctd.cgroup_parent, logs_dir=tmp_path / "logs", pull_timeout=60)
        (sample,) = runner.repetition(  # one sample: no warm second start asked for
            Image("nydus-db:1", Ready("line", "ready to accept connections"), 60),
            Variant("nydus-prefetch-list", "nydus", "_nydus", "list"),
            reference,
            1,
            None,
            snapshotter,
        )
        assert sample.status == "ok", (sample.note, snapshotter.log_tail(40))
        # nydusd read from the registry the listed files (the start reads them all), about nothing else (measured:
        # 8 KiB more, small files read on demand), and far from the whole image.
        inodes = bootstrap.inodes(_image_boot(tmp_path / "nydus", tmp_path / "image.boot"), nydus_image=nydus_image)
        listed = sum(chunk.compressed_size for path in DB_LIST for chunk in inodes[path].chunks)
        assert sample.nydusd_bytes is not None and listed <= sample.nydusd_bytes <= listed + MiB, (
            sample.nydusd_bytes,
            listed,
            [blob.size for blob in done.build.blobs],
        )
    finally:
        if cri is not None:
            cri.close()
        registry.close()
        ctd.close()
        snapshotter.close()
    assert snapshotter.leftovers() == []
