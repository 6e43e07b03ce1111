"""nri_optimizer.nydus.build without nydus-image: which layer a listed path lives in, what goes into the prefetch
table, finding the tool (the builds themselves run in tests/e2e/test_nydus_build.py)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from nri_optimizer.errors import ToolError
from nri_optimizer.nydus import build, tarorder, tool


def layer(*names: str) -> tarorder.LayerIndex:
    """A layer of these names: "d/" a directory, "a=L" a hard link to L, "x+" a file with data, else empty."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name.rstrip("/+").split("=")[0])
            data = b"data" if name.endswith("+") else b""
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            elif "=" in name:
                info.type, info.linkname = tarfile.LNKTYPE, name.split("=")[1]
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tarorder.scan(io.BytesIO(out.getvalue()))


BASE = layer("etc/", "etc/a+", "etc/b+", "etc/c+", "opt/", "opt/x/", "opt/x/old+", "var/", "var/log/", "var/log/f+")
UPPER = layer("etc/", "etc/b+", "etc/.wh.c", "opt/", "opt/x/", "opt/x/.wh..wh..opq", "opt/x/new+", ".wh.var")
TOP = layer("var/", "var/log/", "var/log/g+")  # /var again, after the upper layer removed it


def test_a_path_lives_in_the_highest_layer_that_has_it_unless_one_above_removes_it() -> None:
    paths = [
        "/etc/a",
        "/etc/b",
        "/etc/c",
        "/opt/x/old",
        "/opt/x/new",
        "/opt/x",
        "/var/log/f",
        "/var/log/g",
        "/var",
        "/nowhere",
        "/",
    ]
    assert build.locate([BASE, UPPER, TOP], paths) == {
        "/etc/a": 0,  # only the base has it
        "/etc/b": 1,  # replaced by the upper layer
        # /etc/c: whited out; /opt/x/old: under an opaque directory; /var/log/f: its directory whited out
        "/opt/x/new": 1,
        "/opt/x": 1,  # an opaque directory is there itself
        "/var/log/g": 2,
        "/var": 2,
    }


def test_the_prefetch_table_keeps_list_order_and_what_the_image_has_with_data() -> None:
    base = layer("usr/", "usr/bin+", "usr/empty", "usr/link=usr/empty", "usr/data-link=usr/bin")
    prefetch, absent, empty = build.prefetch_list(
        [base],
        [
            "/usr/data-link",
            "# incomplete: lost events",
            "/usr/missing",
            "usr/bin",
            "/usr/empty",
            "/usr/link",
            "/usr/bin",
            "/usr//bin",
            "/usr/",
        ],
    )
    assert prefetch == ["/usr/data-link", "/usr/bin", "/usr"]  # once each, normalised
    assert absent == ["/usr/missing"]
    assert empty == ["/usr/empty", "/usr/link"]  # a hard link to an empty file is one too


def test_list_paths_are_the_absolute_lines_of_a_plain_list() -> None:
    text = "# incomplete: the kernel lost events\n/usr/bin/env\n\n/etc/hosts\nrelative\n"
    assert build.list_paths(text) == ["/usr/bin/env", "/etc/hosts"]


def test_a_missing_nydus_image_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("NRI_OPTIMIZER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ToolError, match=r"nydus-image is not installed .*; install nydus-rs 2\.2\.0 with `make nydus`"):
        tool.find()
    with pytest.raises(ToolError, match=r"/no/such/nydus-image is not an executable; .*`make nydus`"):
        tool.find(explicit="/no/such/nydus-image")
    cached = tmp_path / "cache" / "tools" / "nydus-rs-2.2.0" / "bin" / "nydus-image"
    cached.parent.mkdir(parents=True)
    cached.write_text("#!/bin/sh\n")
    os.chmod(cached, 0o755)
    assert tool.find() == str(cached)


def test_a_failing_tool_is_one_error_with_the_command_and_its_stderr() -> None:
    with pytest.raises(ToolError, match=r"(?s)sh -c 'echo boom >&2; exit 3' failed \(exit status 3\):\nboom"):
        tool.run(["sh", "-c", "echo boom >&2; exit 3"])
