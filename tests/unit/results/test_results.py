import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nri_optimizer.results.formats import Entry, incompleteness, listable, readable_elapsed, readable_size, render


def entries(*paths: bytes) -> list[Entry]:
    return [Entry(p, 10 * i, 100 * i) for i, p in enumerate(paths, 1)]


def test_render_three_formats_in_order():
    plain, table, prefetch, left_out = render(entries(b"/bin/sh", b"/etc/a,b"), readable=False)
    assert plain == b"/bin/sh\n/etc/a,b\n"
    assert table == b'path,size,elapsed\n/bin/sh,10,100\n"/etc/a,b",20,200\n'
    assert json.loads(prefetch) == {"version": "v1", "files": [{"path": "/bin/sh"}, {"path": "/etc/a,b"}]}
    assert left_out == 0


def test_readable_units_match_upstream():
    assert [readable_size(n) for n in (0, 1023, 1024, 1536, 5 << 30)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 GiB",
    ]
    assert [readable_elapsed(n) for n in (850, 1500, 2_000_000)] == ["850 us", "1.500 ms", "2.000 s"]
    _, table, _, _ = render([Entry(b"/big", 5 << 30, 1500)], readable=True)
    assert table == b"path,size,elapsed\n/big,5.0 GiB,1.500 ms\n"


@pytest.mark.parametrize("path", [b"/a\nb", b"/a\rb", b"/trailing ", b"/tab\t", b" /lead", b"/bad\xff", b"rel"])
def test_odd_names_are_left_out_of_every_format(path):
    assert listable(path) is None
    plain, table, prefetch, left_out = render(entries(b"/ok", path, b"/ok2"), readable=False)
    assert plain == b"/ok\n/ok2\n"
    assert table.count(b"\n") == 3
    assert [f["path"] for f in json.loads(prefetch)["files"]] == ["/ok", "/ok2"]
    assert left_out == 1


def test_names_with_inner_spaces_and_unicode_are_kept():
    assert listable("/a b/ü".encode()) == "/a b/ü"


def nydus_image_reads(plain: bytes) -> list[str]:
    """How nydus-image reads --prefetch-patterns from stdin (UPSTREAM.md): UTF-8 lines, each trimmed,
    lines that are not absolute skipped, order kept."""
    patterns = []
    for line in plain.decode("utf-8").split("\n"):
        line = line.strip()
        if line.startswith("/"):
            patterns.append(line)
    return patterns


@given(st.lists(st.binary(min_size=1, max_size=40).map(lambda b: b"/" + b), max_size=30))
def test_nydus_image_reads_back_exactly_the_listed_paths(paths):
    unique = list(dict.fromkeys(paths))
    plain, _, prefetch, left_out = render([Entry(p, 1, 1) for p in unique], readable=False)
    kept = [p.decode() for p in unique if listable(p) is not None]
    assert nydus_image_reads(plain) == kept
    assert [f["path"] for f in json.loads(prefetch)["files"]] == kept
    assert left_out == len(unique) - len(kept)


def test_an_incomplete_list_says_so_in_a_line_nydus_image_skips():
    plain, table, prefetch, _ = render(entries(b"/a"), readable=False, incomplete="the queue overflowed")
    assert plain == b"# incomplete: the queue overflowed\n/a\n"
    assert nydus_image_reads(plain) == ["/a"]
    assert table == b"path,size,elapsed\n/a,10,100\n"
    assert json.loads(prefetch)["files"] == [{"path": "/a"}]


def test_incompleteness_reads_back_the_first_line():
    plain, _, _, _ = render(entries(b"/a"), readable=False, incomplete="the kernel dropped 3 events")
    assert incompleteness(plain) == "the kernel dropped 3 events"
    assert incompleteness(b"/a\n") is None
    assert incompleteness(b"") is None
