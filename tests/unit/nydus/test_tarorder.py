"""nri_optimizer.nydus.tarorder: the listed files first, in list order, every entry byte for byte."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from nri_optimizer.errors import TarOrderError
from nri_optimizer.nydus import tarorder


@dataclass
class Spec:
    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    pax: dict[str, str] = field(default_factory=dict)


def d(name: str, mode: int = 0o755) -> Spec:
    return Spec(name, tarfile.DIRTYPE, mode=mode)


def f(name: str, data: bytes | None = None, **kw: object) -> Spec:
    """A regular file; its content is its name thrice unless given."""
    return Spec(name, data=name.encode() * 3 if data is None else data, **kw)  # type: ignore[arg-type]


def make_tar(specs: Sequence[Spec], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for spec in specs:
            info = tarfile.TarInfo(spec.name)
            info.type, info.linkname, info.mode = spec.kind, spec.link, spec.mode
            info.uid, info.gid, info.mtime, info.pax_headers = spec.uid, spec.gid, spec.mtime, dict(spec.pax)
            info.size = len(spec.data)
            tar.addfile(info, io.BytesIO(spec.data) if spec.kind == tarfile.REGTYPE else None)
    return out.getvalue()


def reorder(layer: bytes, listed: Sequence[str]) -> tuple[bytes, tarorder.Report]:
    out = io.BytesIO()
    report = tarorder.reorder(io.BytesIO(layer), out, listed)
    return out.getvalue(), report


def names(layer: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        return [member.name for member in tar]


def members(layer: bytes) -> dict[str, tuple[object, ...]]:
    """Every member's metadata, pax headers and content digest, by name (names are unique in these tars)."""
    found: dict[str, tuple[object, ...]] = {}
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        for member in tar:
            data = tar.extractfile(member).read() if member.isreg() else b""  # type: ignore[union-attr]
            found[member.name] = (
                member.type,
                member.mode,
                member.uid,
                member.gid,
                member.mtime,
                member.size,
                member.linkname,
                dict(member.pax_headers),
                hashlib.sha256(data).hexdigest(),
            )
    return found


def entry_bytes(layer: bytes) -> list[bytes]:
    index = tarorder.scan(io.BytesIO(layer))
    return [layer[entry.start : entry.end] for entry in index.entries]


def assert_same_content(before: bytes, after: bytes) -> None:
    """The same entries byte for byte (in another order), the same tail, the same size."""
    assert len(after) == len(before)
    assert sorted(entry_bytes(after)) == sorted(entry_bytes(before))
    end = tarorder.scan(io.BytesIO(before)).end
    assert after[end:] == before[end:]
    assert members(after) == members(before)


TREE = [
    d("./"),
    d("./etc/"),
    f("./etc/hosts"),
    d("./usr/"),
    d("./usr/bin/"),
    f("./usr/bin/env"),
    f("./usr/bin/sh"),
    d("./usr/lib/"),
    f("./usr/lib/libc.so", b"\x7fELF" * 5000),
    f("./usr/lib/libm.so"),
    d("./var/"),
    f("./var/log"),
]


def test_listed_files_come_first_in_list_order_with_their_directories_before_them() -> None:
    layer = make_tar(TREE)
    out, report = reorder(layer, ["/usr/lib/libm.so", "/etc/hosts", "/usr/bin/env"])
    assert names(out) == [
        ".",
        "./usr",
        "./usr/lib",
        "./usr/lib/libm.so",  # the root and parents once, outermost first
        "./etc",
        "./etc/hosts",
        "./usr/bin",
        "./usr/bin/env",
        "./usr/bin/sh",
        "./usr/lib/libc.so",
        "./var",
        "./var/log",  # the rest in its original order
    ]
    assert report == tarorder.Report(moved=("/usr/lib/libm.so", "/etc/hosts", "/usr/bin/env"), absent=(), kept=())
    assert_same_content(layer, out)


def test_an_empty_list_changes_nothing() -> None:
    layer = make_tar(TREE)
    assert reorder(layer, []) == (layer, tarorder.Report((), (), ()))


def test_a_path_listed_twice_counts_once_and_names_are_normalised() -> None:
    layer = make_tar([d("usr"), f("usr/a"), f("usr/b")])
    out, report = reorder(layer, ["/usr/b", "//usr/./b", "/usr/a/", "/usr/b"])
    assert names(out) == ["usr", "usr/b", "usr/a"]
    assert report.moved == ("/usr/b", "/usr/a")


def test_a_listed_path_absent_from_the_layer_is_reported_and_changes_nothing() -> None:
    layer = make_tar(TREE)
    out, report = reorder(layer, ["/usr/bin/python3", "/usr/bin/sh"])
    assert names(out)[:4] == [".", "./usr", "./usr/bin", "./usr/bin/sh"]
    assert report == tarorder.Report(moved=("/usr/bin/sh",), absent=("/usr/bin/python3",), kept=())
    assert_same_content(layer, out)


def test_a_listed_directory_moves_its_own_entry_not_its_children() -> None:
    layer = make_tar(TREE)
    out, report = reorder(layer, ["/usr/lib", "/var/log"])
    assert names(out) == [
        ".",
        "./usr",
        "./usr/lib",
        "./var",
        "./var/log",
        "./etc",
        "./etc/hosts",
        "./usr/bin",
        "./usr/bin/env",
        "./usr/bin/sh",
        "./usr/lib/libc.so",
        "./usr/lib/libm.so",
    ]
    assert report.moved == ("/usr/lib", "/var/log")


def test_a_file_without_a_directory_entry_moves_alone() -> None:
    layer = make_tar([f("a/x"), f("b/y"), d("b"), f("b/z")])  # no entry for a/, b/ comes after b/y
    out, _ = reorder(layer, ["/b/z", "/a/x"])
    assert names(out) == ["b", "b/z", "a/x", "b/y"]


def test_symlinks_move_as_entries_and_stay_put_when_unlisted() -> None:
    layer = make_tar(
        [
            d("usr"),
            f("usr/real"),
            Spec("usr/alias", tarfile.SYMTYPE, link="real"),
            Spec("usr/other", tarfile.SYMTYPE, link="/usr/real"),
            f("usr/z"),
        ]
    )
    out, _ = reorder(layer, ["/usr/z", "/usr/alias"])
    assert names(out) == ["usr", "usr/z", "usr/alias", "usr/real", "usr/other"]
    assert_same_content(layer, out)


HARDLINKS = [
    d("bin"),
    f("bin/busybox", b"busybox" * 1000, mode=0o755),
    d("sbin"),
    Spec("sbin/init", tarfile.LNKTYPE, link="bin/busybox", mode=0o755),
    Spec("sbin/halt", tarfile.LNKTYPE, link="bin/busybox", mode=0o755),
    f("zz"),
]


def test_a_listed_hard_link_brings_its_target_to_its_place() -> None:
    layer = make_tar(HARDLINKS)
    out, report = reorder(layer, ["/zz", "/sbin/halt"])
    # The data travels with the target's entry, which a link must follow: both at the link's place in the list.
    assert names(out) == ["zz", "bin", "bin/busybox", "sbin", "sbin/halt", "sbin/init"]
    assert report.moved == ("/zz", "/sbin/halt")
    assert_same_content(layer, out)


def test_a_listed_hard_link_target_moves_ahead_of_its_unlisted_links() -> None:
    layer = make_tar([f("aa"), *HARDLINKS])
    out, _ = reorder(layer, ["/bin/busybox"])
    assert names(out) == ["bin", "bin/busybox", "aa", "sbin", "sbin/init", "sbin/halt", "zz"]
    assert_same_content(layer, out)


@pytest.mark.parametrize("listed", [["/sbin/init", "/bin/busybox"], ["/bin/busybox", "/sbin/init"]])
def test_a_link_and_its_target_both_listed_put_the_data_at_the_first_of_them(listed: list[str]) -> None:
    layer = make_tar(HARDLINKS)
    out, report = reorder(layer, listed)
    assert names(out)[:4] == ["bin", "bin/busybox", "sbin", "sbin/init"]
    assert report.moved == tuple(listed)
    assert_same_content(layer, out)


def test_a_hard_link_to_a_hard_link_brings_the_whole_chain() -> None:
    layer = make_tar([f("a"), Spec("b", tarfile.LNKTYPE, link="a"), f("m"), Spec("c", tarfile.LNKTYPE, link="b")])
    out, _ = reorder(layer, ["/m", "/c"])
    assert names(out) == ["m", "a", "b", "c"]


def test_whiteouts_and_opaque_markers_stay_in_place() -> None:
    layer = make_tar(
        [d("etc"), f("etc/.wh.passwd", b""), d("opt"), f("opt/.wh..wh..opq", b""), f("opt/new"), f("etc/shadow")]
    )
    out, _ = reorder(layer, ["/etc/shadow", "/opt/new"])
    assert names(out) == ["etc", "etc/shadow", "opt", "opt/new", "etc/.wh.passwd", "opt/.wh..wh..opq"]
    assert_same_content(layer, out)


XATTRS = {"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.xattr.user.note": "kept"}


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_extended_headers_move_with_their_entry(fmt: int) -> None:
    long_name = "usr/" + "deep/" * 30 + "file.so"  # over 100 bytes: a pax path or a GNU long-name header
    pax = XATTRS if fmt == tarfile.PAX_FORMAT else {}
    layer = make_tar(
        [
            d("usr"),
            f("usr/first"),
            f(long_name, b"x" * 700, pax=pax, uid=1000, gid=1000, mode=0o4755),
            Spec("usr/long-link", tarfile.SYMTYPE, link="/" + long_name),
            f("usr/last"),
        ],
        fmt,
    )
    out, _ = reorder(layer, ["/usr/long-link", "/" + long_name])
    assert names(out) == ["usr", "usr/long-link", long_name, "usr/first", "usr/last"]
    assert_same_content(layer, out)
    if pax:
        assert members(out)[long_name][7] == {**XATTRS, "path": long_name}


def test_a_directory_with_several_entries_moves_with_all_of_them_in_order() -> None:
    layer = make_tar([d("usr", mode=0o700), f("usr/x"), f("a"), d("usr", mode=0o755), f("usr/y")])
    out, report = reorder(layer, ["/usr/y"])
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        assert [(member.name, member.mode) for member in tar] == [
            ("usr", 0o700),
            ("usr", 0o755),
            ("usr/y", 0o644),
            ("usr/x", 0o644),
            ("a", 0o644),
        ]
    assert report.moved == ("/usr/y",)


def test_a_file_replaced_within_the_layer_stays_in_place_and_so_does_what_needs_it() -> None:
    # Which of the two entries of /a a hard link binds to depends on their order: neither may move.
    layer = make_tar([f("a", b"first"), Spec("l", tarfile.LNKTYPE, link="a"), f("a", b"second"), f("z")])
    out, report = reorder(layer, ["/z", "/a", "/l"])
    assert out == reorder(layer, ["/z"])[0]
    assert names(out) == ["z", "a", "l", "a"]
    assert report == tarorder.Report(moved=("/z",), absent=(), kept=("/a", "/l"))


def test_everything_after_the_end_of_archive_is_copied_last_unchanged() -> None:
    layer = make_tar([f("a"), f("b")]) + b"trailing bytes no tar reader looks at"
    out, _ = reorder(layer, ["/b"])
    assert names(out) == ["b", "a"]
    assert out.endswith(b"\0" * 1024 + b"trailing bytes no tar reader looks at")  # (and the record padding)
    assert len(out) == len(layer)


def test_an_empty_layer_is_copied_as_it_is() -> None:
    layer = b"\0" * 1024  # what docker writes for a layer without files
    assert reorder(layer, ["/a"]) == (layer, tarorder.Report((), ("/a",), ()))


def test_a_global_pax_header_is_refused() -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "git"}) as tar:
        tar.addfile(tarfile.TarInfo("a"), io.BytesIO(b""))
    with pytest.raises(TarOrderError, match="global pax header"):
        reorder(out.getvalue(), ["/a"])


def test_a_file_that_is_not_a_tar_is_refused() -> None:
    with pytest.raises(TarOrderError, match="not an uncompressed tar"):
        reorder(b"\x1f\x8b\x08" + b"\0" * 2000, ["/a"])


def test_a_truncated_layer_is_refused() -> None:
    layer = make_tar([f("a", b"x" * 5000), f("b")])
    index = tarorder.scan(io.BytesIO(layer))
    with pytest.raises(TarOrderError, match="ends inside an entry"):
        tarorder.reorder(io.BytesIO(layer[: index.entries[0].end - 600]), io.BytesIO(), ["/a"], index)


class PieceCounter(io.BytesIO):
    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        piece = super().read(size)
        self.largest = max(self.largest, len(piece))
        return piece


def test_file_data_is_copied_in_bounded_pieces() -> None:
    big = 3 * tarorder._COPY_PIECE + 12345
    layer = make_tar([f("small"), f("big", b"\xab" * big)])
    source, out = PieceCounter(layer), io.BytesIO()
    tarorder.reorder(source, out, ["/big"])
    assert names(out.getvalue()) == ["big", "small"]
    assert source.largest == tarorder._COPY_PIECE
