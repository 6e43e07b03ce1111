"""nri_optimizer.nydus.bootstrap: reading nydus-image 2.2.0's printouts (captured from the real tool; the e2e tests
run it), and the ordering check of the listed files' chunks."""

from __future__ import annotations

import pytest

from nri_optimizer.errors import ToolError
from nri_optimizer.nydus import bootstrap
from nri_optimizer.nydus.bootstrap import Chunk, Inode, PrefetchEntry

# nydus-image check -B B --verbose (2.2.0), a regular file, a hard link pair, an empty file, odd names.
CHECK = """\
inode: dir "/": index 0 ino 128 real_ino 128 i_parent 128 child_index 0 child_count 1 i_nlink 3 i_size 42 i_blocks 1 i_name_size 1 i_symlink_size 42 has_xattr false link None i_mtime 0 i_mtime_nsec 0
inode: file "/usr/a": index 0 ino 137 real_ino 137 i_parent 132 child_index 0 child_count 3 i_nlink 1 i_size 3145728 i_blocks 6144 i_name_size 1 i_symlink_size 0 has_xattr false link None i_mtime 12345 i_mtime_nsec 0
\t chunk: id 533430c02d3bc96368d831d311e11a7b71e68ea269199e01243935c66095b7e0, index 0, blob_index 0, file_offset 0, compressed 0/1048576, uncompressed 0/1048576
\t chunk: id a97788194cff030aa7611d50ae342c524b5aebe10d58fd74f6c1ea1dc3844942, index 1, blob_index 0, file_offset 1048576, compressed 1048576/1048576, uncompressed 1048576/1048576
inode: hardlink "/usr/c": index 0 ino 143 real_ino 143 i_parent 132 child_index 0 child_count 2 i_nlink 2 i_size 100000 i_blocks 4096 i_name_size 1 i_symlink_size 0 has_xattr false link None i_mtime 0 i_mtime_nsec 0
\t chunk: id d737e920ad297553a783087f75c933a7258b98613754f4f664da4a56037ff2ca, index 4, blob_index 0, file_offset 0, compressed 2097152/40000, uncompressed 2097152/100000
inode: file "/usr/e": index 0 ino 146 real_ino 146 i_parent 132 child_index 0 child_count 0 i_nlink 1 i_size 0 i_blocks 0 i_name_size 1 i_symlink_size 0 has_xattr false link None i_mtime 0 i_mtime_nsec 0
inode: hardlink "/usr/hl": index 0 ino 143 real_ino 143 i_parent 132 child_index 0 child_count 2 i_nlink 2 i_size 100000 i_blocks 4096 i_name_size 2 i_symlink_size 0 has_xattr false link None i_mtime 0 i_mtime_nsec 0
\t chunk: id d737e920ad297553a783087f75c933a7258b98613754f4f664da4a56037ff2ca, index 4, blob_index 0, file_offset 0, compressed 2097152/40000, uncompressed 2097152/100000
inode: file "/dir with space/file \\"q\\" \\\\ back": index 0 ino 175 real_ino 175 i_parent 171 child_index 0 child_count 0 i_nlink 1 i_size 0 i_blocks 0 i_name_size 20 i_symlink_size 0 has_xattr false link None i_mtime 0 i_mtime_nsec 0
inode: file "/nl\\nname\\ttab\\u{200b}\\u{1}": index 0 ino 151 real_ino 151 i_parent 128 child_index 0 child_count 0 i_nlink 1 i_size 0 i_blocks 0 i_name_size 7 i_symlink_size 0 has_xattr false link None i_mtime 0 i_mtime_nsec 0
inode: file "/\\xFF\\xFE-bytes 日本": index 0 ino 168 real_ino 168 i_parent 128 child_index 0 child_count 0 i_nlink 1 i_size 0 i_blocks 0 i_name_size 8 i_symlink_size 0 has_xattr false link None i_mtime 0 i_mtime_nsec 0
inode:  "/null": index 0 ino 154 real_ino 154 i_parent 128 child_index 0 child_count 0 i_nlink 1 i_size 0 i_blocks 0 i_name_size 4 i_symlink_size 0 has_xattr false link None i_mtime 0 i_mtime_nsec 0
inode: symlink "/sl": index 0 ino 156 real_ino 156 i_parent 128 child_index 0 child_count 0 i_nlink 1 i_size 12 i_blocks 0 i_name_size 2 i_symlink_size 12 has_xattr false link Some("target \\"x\\"\\n\\\\") i_mtime 0 i_mtime_nsec 0
RAFS filesystem metadata is valid, referenced data blobs:
\t 0: bcdb849492fcf0aabe4e0355d07ef5f3e080a16c55ed2235743b0d301bb57419, compressed data size 0x5186a0, compressed file size 0x5196dd, uncompressed file size 0x519000, chunks: 0x6, features: aligned cap_toc
"""

A0 = Chunk("533430c02d3bc96368d831d311e11a7b71e68ea269199e01243935c66095b7e0", 0, 0, 0, 1048576, 1048576)
A1 = Chunk("a97788194cff030aa7611d50ae342c524b5aebe10d58fd74f6c1ea1dc3844942", 0, 1048576, 1048576, 1048576, 1048576)
C0 = Chunk("d737e920ad297553a783087f75c933a7258b98613754f4f664da4a56037ff2ca", 0, 0, 2097152, 40000, 100000)


def test_check_verbose_gives_every_inode_with_its_chunks() -> None:
    inodes = bootstrap.parse_check(CHECK)
    assert list(inodes) == [
        "/",
        "/usr/a",
        "/usr/c",
        "/usr/e",
        "/usr/hl",
        '/dir with space/file "q" \\ back',
        "/nl\nname\ttab\u200b\x01",
        "/\udcff\udcfe-bytes 日本",
        "/null",
        "/sl",
    ]
    assert inodes["/usr/a"] == Inode("/usr/a", "file", 137, 1, 3145728, 12345, None, (A0, A1))
    assert inodes["/usr/c"] == Inode("/usr/c", "hardlink", 143, 2, 100000, 0, None, (C0,))
    assert inodes["/usr/hl"].chunks == (C0,)
    assert inodes["/usr/e"].chunks == ()
    assert (inodes["/null"].kind, inodes["/sl"].kind, inodes["/sl"].symlink) == ("", "symlink", 'target "x"\n\\')


def test_an_unknown_line_shape_is_an_error_not_a_silent_gap() -> None:
    with pytest.raises(ToolError, match="inode line we do not understand"):
        bootstrap.parse_check('inode: file "/a": something else entirely\n')
    with pytest.raises(ToolError, match="chunk before any inode"):
        bootstrap.parse_check(CHECK.splitlines()[2] + "\n")
    with pytest.raises(ToolError, match="escape we do not know"):
        bootstrap.parse_check(CHECK.splitlines()[1].replace("/usr/a", "/usr/\\q"))


def test_the_prefetch_table_as_a_list_leaves_out_what_matched_nothing() -> None:
    table = [PrefetchEntry(143, ("/usr/c", "/usr/c")), PrefetchEntry(137, ("/usr/a",)), PrefetchEntry(0, ())]
    assert bootstrap.prefetch_paths(table) == ["/usr/c", "/usr/a"]


def inode(path: str, *chunks: tuple[int, int, int]) -> Inode:
    """A file whose chunks are (blob index, compressed offset, compressed size)."""
    return Inode(
        path,
        "file",
        1,
        1,
        0,
        0,
        None,
        tuple(
            Chunk(f"{blob}-{offset}", blob, number << 20, offset, size, size)
            for number, (blob, offset, size) in enumerate(chunks)
        ),
    )


def test_listed_chunks_in_order_from_each_blobs_head_are_contiguous() -> None:
    layout = {
        "/a": inode("/a", (0, 0, 100), (0, 100, 50)),
        "/b": inode("/b", (1, 0, 70)),  # the next layer's blob has its own head
        "/c": inode("/c", (0, 150, 10)),
        "/d": inode("/d", (1, 70, 5)),
        "/same-as-a": inode("/same-as-a", (0, 0, 100)),  # content stored once: points back, breaks nothing
        "/empty": inode("/empty"),
    }
    listed = ["/a", "/b", "/missing", "/empty", "/same-as-a", "/c", "/d", "/a"]
    assert bootstrap.layout_breaks(layout, listed) == []
    assert bootstrap.listed_chunks_contiguous_in_order(layout, listed)


def test_a_gap_or_a_swap_is_a_break_named_by_file_and_offset() -> None:
    layout = {"/a": inode("/a", (0, 0, 100)), "/b": inode("/b", (0, 200, 10)), "/c": inode("/c", (0, 100, 100))}
    assert bootstrap.layout_breaks(layout, ["/a", "/b", "/c"]) == [
        "/b: chunk at file offset 0 is at blob 0 offset 200, expected 100",
        "/c: chunk at file offset 0 is at blob 0 offset 100, expected 210",
    ]
    assert not bootstrap.listed_chunks_contiguous_in_order(layout, ["/c", "/a"])  # not at the head
    assert bootstrap.listed_chunks_contiguous_in_order(layout, ["/a", "/c", "/b"])
