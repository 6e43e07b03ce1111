"""`make nydus` (testbed/toolchain.py): once installed, the tool chain is found in the cache with no build tool and
no archive; a build is published whole or not at all, and says how far it got while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed import TestbedError, toolchain


def test_a_second_run_needs_no_cargo_go_or_apt(tmp_path: Path) -> None:
    try:
        toolchain.install()  # the first run (make test ran make nydus already: then this finds everything)
    except TestbedError as error:
        pytest.fail(f"the nydus tool chain cannot be installed (make nydus): {error}")
    bare = tmp_path / "bin"  # only the interpreter: no cargo, go, apt-get or dpkg-deb to reach for
    bare.mkdir()
    (bare / "python3").symlink_to(sys.executable)
    result = subprocess.run(
        [str(bare / "python3"), "-m", "testbed", "tools"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(bare)},
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    names = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert names[:2] == [f"nydus-rs {toolchain.NYDUS_RS_VERSION}", f"crictl {toolchain.CRICTL_VERSION}"]
    assert {"containerd-nydus-grpc", "docker-registry"} <= set(names)
    for name in ("nydusd", "nydus-image", "nydusctl"):
        assert (toolchain.nydus_rs_root() / "bin" / name).is_file()


def fake_build(staging: Path, cache: Path, log: Path, say: object) -> None:
    (staging / "bin").mkdir(parents=True)
    for name in ("a", "b"):
        (staging / "bin" / name).write_text("#!/bin/sh\n")
        (staging / "bin" / name).chmod(0o755)
    calls.append(staging)


calls: list[Path] = []


def test_a_build_is_published_whole_once_and_found_after(tmp_path: Path) -> None:
    root = tmp_path / "tools" / "thing-1"
    said: list[str] = []
    calls.clear()
    first = toolchain._installed_once("thing 1", root, ("a", "b"), fake_build, tmp_path, said.append)
    second = toolchain._installed_once("thing 1", root, ("a", "b"), fake_build, tmp_path, said.append)
    assert len(calls) == 1 and calls[0] != root  # built aside, then renamed into place
    assert first.paths == second.paths == (root / "bin" / "a", root / "bin" / "b")
    assert first.seconds is not None and second.seconds == first.seconds  # the build time is kept with it
    assert said == [f"thing 1: built in {first.seconds:.1f} s, in {root / 'bin'}"]
    assert sorted(p.name for p in (tmp_path / "tools").iterdir()) == ["lock", "thing-1"]


def test_a_failed_build_leaves_nothing_but_its_log(tmp_path: Path) -> None:
    root = tmp_path / "tools" / "thing-1"

    def failing(staging: Path, cache: Path, log: Path, say: object) -> None:
        (staging / "bin").mkdir()
        (staging / "bin" / "a").write_text("half\n")
        toolchain._run_logged(
            ["sh", "-c", "echo compiling; echo broken >&2; exit 7"], dict(os.environ), log, "thing", print, None
        )

    with pytest.raises(TestbedError) as caught:
        toolchain._installed_once("thing 1", root, ("a",), failing, tmp_path, print)
    log = root.with_name("thing-1.build.log")
    assert str(caught.value) == (
        f"sh -c 'echo compiling; echo broken >&2; exit 7' failed (exit status 7); full log in {log}:\ncompiling\nbroken"
    )
    assert sorted(p.name for p in (tmp_path / "tools").iterdir()) == ["lock", "thing-1.build.log"]


def test_a_long_build_says_how_far_it_got_while_it_is_quiet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(toolchain, "PROGRESS_EVERY", 0.5)
    said: list[str] = []
    script = 'echo "   Compiling one v1"; echo "   Compiling two v2"; sleep 1.2; echo done'
    toolchain._run_logged(
        ["sh", "-c", script],
        dict(os.environ),
        tmp_path / "log",
        "thing",
        said.append,
        ("Compiling ", "crates compiled"),
    )
    assert len(said) >= 2 and all(line.startswith("thing: 2 crates compiled, ") for line in said), said
    assert said[-1].endswith(" so far (Compiling two v2)")
    assert not (tmp_path / "log").exists()  # kept only when the build fails
