"""Leaving out what the container wrote: its overlay upper layer, listed once or looked up per path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from nri_optimizer.results.formats import Entry
from nri_optimizer.trace.upper import UpperLayer, upper_dir


def entries(*paths: str) -> list[Entry]:
    return [Entry(p.encode(), 1, i) for i, p in enumerate(paths)]


@pytest.fixture
def upper(tmp_path: Path) -> Path:
    """An upper layer as overlayfs leaves it: written files, a copied-up directory, a whiteout."""
    root = tmp_path / "upper"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("written\n")
    (root / "run").mkdir()
    (root / "run" / "app.pid").write_text("1\n")
    os.mknod(root / "gone", stat.S_IFCHR | 0o600, 0)  # a whiteout: the container deleted /gone
    return root


def layer(root: Path) -> UpperLayer:
    return UpperLayer(os.open(root, os.O_PATH | os.O_DIRECTORY))


LISTED = ("/bin/sh", "/etc/passwd", "/etc/group", "/run/app.pid", "/gone", "/lib/libc.so.6")
KEPT = [entry for entry in entries(*LISTED) if entry.path in (b"/bin/sh", b"/etc/group", b"/lib/libc.so.6")]


def test_written_created_and_deleted_paths_are_left_out_in_order(upper: Path) -> None:
    up = layer(upper)
    try:
        assert up.without_written(entries(*LISTED)) == KEPT
    finally:
        up.close()


def test_a_layer_larger_than_the_list_is_looked_up_per_path_with_the_same_answer(upper: Path) -> None:
    for i in range(20):
        (upper / "run" / f"log{i}").write_text("x\n")
    up = layer(upper)
    try:
        assert up._contents(limit=len(LISTED)) is None  # more entries than listed paths: not listed on
        assert up.without_written(entries(*LISTED)) == KEPT
    finally:
        up.close()


def test_listing_does_not_follow_a_symlink_out_of_the_layer(upper: Path, tmp_path: Path) -> None:
    outside = tmp_path / "host"
    outside.mkdir()
    for i in range(50):
        (outside / f"f{i}").write_text("host\n")
    (upper / "link").symlink_to(outside)
    up = layer(upper)
    try:
        assert up._contents(limit=10) == {b"/etc", b"/etc/passwd", b"/run", b"/run/app.pid", b"/gone", b"/link"}
    finally:
        up.close()


def test_upper_dir_is_read_from_the_root_mount_with_escapes() -> None:
    info = (
        "22 1 0:21 / /proc rw - proc proc rw\n"
        "850 800 0:52 / / rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,"
        "upperdir=/var/lib/c\\040d/fs,workdir=/var/lib/c\\040d/work\n"
    )
    assert upper_dir(info) == "/var/lib/c d/fs"
    assert upper_dir("850 800 0:52 / / rw - ext4 /dev/sda1 rw\n") is None
