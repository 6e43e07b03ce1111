"""The pure parts of list artifacts: what a list must look like, which node's list counts, how lists merge.
Pushing and pulling against real registries is tests/e2e/test_registry_lists.py."""

from __future__ import annotations

from typing import Any

import pytest

from nri_optimizer.errors import ListArtifactError
from nri_optimizer.oci import artifacts
from nri_optimizer.oci.registry import referrers_tag
from nri_optimizer.results.formats import Entry
from nri_optimizer.results.merge import parse_run

DIGEST = "sha256:" + "ab" * 32


def descriptor(
    digest: str, node: str, created: str, workload: str = "", artifact_type: str = artifacts.ARTIFACT_TYPE
) -> dict[str, Any]:
    annotations = {artifacts.NODE: node, artifacts.CREATED: created}
    if workload:
        annotations[artifacts.WORKLOAD] = workload
    return {"digest": digest, "artifactType": artifact_type, "annotations": annotations}


def remote(node: str, plain: bytes, table: bytes | None = None) -> artifacts.RemoteList:
    return artifacts.RemoteList(
        "sha256:" + node * 64, node, "", parse_run(plain, table, where=node), artifacts.ListFiles(plain, table)
    )


def test_a_plain_list_is_absolute_paths_after_an_optional_incomplete_line() -> None:
    assert artifacts._paths(b"/a\n/b c\n", "x") == [b"/a", b"/b c"]
    assert artifacts._paths(b"# incomplete: the kernel dropped 3 events, files are missing\n/a\n", "x") == [b"/a"]
    assert artifacts._paths(b"", "x") == []


@pytest.mark.parametrize(
    ("plain", "message"),
    [
        (b"/a\nrelative\n", "x: line 2 is not an absolute path: not a list"),
        (b"/a\n\n/b\n", "x: line 2 is not an absolute path: not a list"),
        (b"/a\n# incomplete: late\n", "x: line 2 is not an absolute path: not a list"),
        (b"\x89PNG\r\n", "x: not UTF-8 text: not a list"),
        (b'{"version": "v1", "files": []}', "x: line 1 is not an absolute path: not a list"),
    ],
)
def test_what_is_not_a_list_is_refused_in_one_line(plain: bytes, message: str) -> None:
    with pytest.raises(ListArtifactError) as caught:
        artifacts._paths(plain, "x")
    assert str(caught.value) == message


def test_each_nodes_newest_list_counts_newest_first() -> None:
    found = [
        descriptor("sha256:1", "a", "2026-01-01T00:00:00Z"),
        descriptor("sha256:2", "b", "2026-01-03T00:00:00.000001Z"),
        descriptor("sha256:3", "a", "2026-01-02T00:00:00+00:00"),
        descriptor("sha256:4", "c", "not a time"),
        descriptor("sha256:5", "b", "2026-01-03T00:00:00Z"),
    ]
    newest = artifacts._newest_by_node(None, "", (), found)  # type: ignore[arg-type]
    assert [d["digest"] for d in newest] == ["sha256:2", "sha256:3", "sha256:4"]
    only = artifacts._newest_by_node(None, "", ("a", "c"), found)  # type: ignore[arg-type]
    assert [d["digest"] for d in only] == ["sha256:3", "sha256:4"]


def test_lists_merge_by_the_merge_rule_incomplete_ones_only_without_a_complete_one() -> None:
    complete_a = remote("a", b"/x\n/y\n", b"path,size,elapsed\n/x,1,10\n/y,2,20\n")
    complete_b = remote("b", b"/y\n/z\n", b"path,size,elapsed\n/y,2,30\n/z,3,40\n")
    incomplete = remote("c", b"# incomplete: the kernel's event queue overflowed, files are missing\n/q\n")
    merged = artifacts.merge_lists([complete_a, incomplete, complete_b])
    assert merged.used == [complete_a, complete_b]
    assert merged.incomplete is None
    # /x rank 0 in a; /y ranks 1 and 0 (median 0.5); /z rank 1 in b.
    assert merged.merged.entries == [Entry(b"/x", 1, 10), Entry(b"/y", 2, 25), Entry(b"/z", 3, 40)]
    alone = artifacts.merge_lists([incomplete])
    assert alone.used == [incomplete]
    assert alone.incomplete == "the kernel's event queue overflowed, files are missing"
    both = artifacts.merge_lists([incomplete, remote("d", b"# incomplete: the kernel dropped 1 events\n/r\n")])
    assert both.incomplete == (
        "2 nodes' lists merged, each incomplete; newest: the kernel's event queue overflowed, files are missing"
    )
    with pytest.raises(ValueError, match="--min-runs must be between 1 and the number of runs"):
        artifacts.merge_lists([complete_a], min_runs=2)


def test_layers_are_the_files_a_result_has_in_a_fixed_order() -> None:
    files = artifacts.ListFiles(b"/a\n", None, b"{}")
    assert files.layers() == [(artifacts.PATHS_TYPE, "", b"/a\n"), (artifacts.NYDUS_TYPE, ".json", b"{}")]


def test_the_referrers_tag_is_the_digest_with_a_dash() -> None:
    assert referrers_tag(DIGEST) == "sha256-" + "ab" * 32


def test_a_list_too_large_to_pull_is_not_pushed() -> None:
    huge = artifacts.ListFiles(b"/a\n", b"x" * (artifacts.MAX_LIST_BLOB + 1))
    with pytest.raises(ListArtifactError) as caught:
        artifacts.push_list(None, huge, name="app:v1", node="n")  # type: ignore[arg-type]  # refused before any request
    assert (
        str(caught.value) == f"app:v1.csv: {artifacts.MAX_LIST_BLOB + 1} bytes, more than a list artifact carries "
        f"({artifacts.MAX_LIST_BLOB})"
    )
