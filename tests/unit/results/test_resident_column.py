"""The CSV's resident column: there when a trace measured residency, after upstream's three columns."""

from __future__ import annotations

import csv
import io

from nri_optimizer.results.formats import Entry, render


def test_without_residency_the_csv_is_upstreams_three_columns() -> None:
    _, table, _, _ = render([Entry(b"/a", 10, 100), Entry(b"/b", 20, 200)], readable=False)
    assert table == b"path,size,elapsed\n/a,10,100\n/b,20,200\n"


def test_residency_is_a_fourth_column_empty_where_not_measured() -> None:
    entries = [Entry(b"/small", 10, 100), Entry(b"/big", 1 << 20, 200, 139264), Entry(b"/odd,name", 5 << 20, 300, 0)]
    _, table, _, _ = render(entries, readable=False)
    assert table == b'path,size,elapsed,resident\n/small,10,100,\n/big,1048576,200,139264\n"/odd,name",5242880,300,0\n'
    # A reader of upstream's three columns reads them as before.
    rows = list(csv.DictReader(io.StringIO(table.decode())))
    assert [(row["path"], row["size"], row["elapsed"]) for row in rows] == [
        ("/small", "10", "100"),
        ("/big", "1048576", "200"),
        ("/odd,name", "5242880", "300"),
    ]


def test_readable_residency_in_human_units() -> None:
    _, table, _, _ = render([Entry(b"/small", 10, 100), Entry(b"/big", 1 << 20, 2000, 139264)], readable=True)
    assert table == b"path,size,elapsed,resident\n/small,10 B,100 us,\n/big,1.0 MiB,2.000 ms,136.0 KiB\n"
