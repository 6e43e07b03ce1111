"""The nydus JSON's ranges: which part of a file cached in part to prefetch; the list and the CSV unchanged."""

from __future__ import annotations

import json

from nri_optimizer.results.formats import Entry, render

PART = ((0, 4096), (524288, 8192))
ENTRIES = [
    Entry(b"/bin/sh", 10, 100),
    Entry(b"/lib/big.so", 5 << 20, 200, 12288, PART),
    Entry(b"/bad\nname", 1 << 20, 250, 4096, ((0, 4096),)),  # left out by the odd-name rule, ranges with it
    Entry(b'/odd "name"', 1 << 20, 300, 1 << 20),
]


def test_a_file_cached_in_part_says_its_ranges_in_the_json_as_json_dumps_writes_them() -> None:
    plain, table, prefetch, left_out = render(ENTRIES, readable=False)
    assert prefetch == (
        b'{"version": "v1", "files": [{"path": "/bin/sh"}, '
        b'{"path": "/lib/big.so", "ranges": [[0, 4096], [524288, 8192]]}, {"path": "/odd \\"name\\""}]}\n'
    )
    files = [
        {"path": "/bin/sh"},
        {"path": "/lib/big.so", "ranges": [[0, 4096], [524288, 8192]]},
        {"path": '/odd "name"'},
    ]
    assert prefetch == (json.dumps({"version": "v1", "files": files}) + "\n").encode()
    # The list and the CSV are upstream's, whatever the ranges.
    assert plain == b'/bin/sh\n/lib/big.so\n/odd "name"\n'
    assert table == (
        b"path,size,elapsed,resident\n/bin/sh,10,100,\n/lib/big.so,5242880,200,12288\n"
        b'"/odd ""name""",1048576,300,1048576\n'
    )
    assert left_out == 1


def test_ranges_of_an_incomplete_list_go_to_their_own_paths() -> None:
    _, _, prefetch, _ = render(ENTRIES, readable=False, incomplete="the queue overflowed")
    assert json.loads(prefetch)["files"][1] == {"path": "/lib/big.so", "ranges": [[0, 4096], [524288, 8192]]}


def test_without_ranges_the_json_is_the_same_bytes_as_before() -> None:
    whole = [entry._replace(ranges=None) for entry in ENTRIES]
    _, _, prefetch, _ = render(whole, readable=False)
    assert prefetch == (
        b'{"version": "v1", "files": [{"path": "/bin/sh"}, {"path": "/lib/big.so"}, {"path": "/odd \\"name\\""}]}\n'
    )
    # No ranges and empty ranges alike: the whole file.
    assert render([entry._replace(ranges=()) for entry in ENTRIES], readable=False)[2] == prefetch
