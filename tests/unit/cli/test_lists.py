"""push-list and pull-list: what they refuse before they ask a registry, in one line with exit status 2. Pushing and
pulling for real is tests/e2e/test_registry_lists.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nri_optimizer.cli import main


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    return err.rstrip("\n")


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    path = tmp_path / "app:v1"
    path.write_text("/bin/sh\n")
    return path


def test_an_image_that_is_no_reference(capsys: pytest.CaptureFixture[str], recorded: Path) -> None:
    assert refused(["push-list", "Registry/App", "--list", str(recorded)], capsys) == (
        "nri-optimizer push-list: IMAGE Registry/App: not a valid image reference: 'Registry/App'"
    )


def test_no_list_to_push(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing"
    assert refused(["push-list", "127.0.0.1:1/app:v1", "--list", str(missing)], capsys) == (
        f"nri-optimizer push-list: no recorded list at {missing}; record one first (nri-optimizer profile IMAGE) or "
        "pass --list"
    )
    assert refused(
        ["push-list", "127.0.0.1:1/app:v1", "--persist-dir", str(tmp_path), "--config", "/dev/null"], capsys
    ) == (
        f"nri-optimizer push-list: no recorded list at {tmp_path / 'app:v1'}; record one first "
        "(nri-optimizer profile IMAGE) or pass --list"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workload", "not a name"], "--workload not a name: not a valid workload name (a label value)"),
        (["--node", ""], "--node: a node name must not be empty"),
        (["--platform", "linux"], "--platform linux: expected OS/ARCH, e.g. linux/amd64"),
    ],
)
def test_bad_options_of_push_list(
    argv: list[str], message: str, recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert refused(["push-list", "127.0.0.1:1/app:v1", "--list", str(recorded), *argv], capsys) == (
        f"nri-optimizer push-list: {message}"
    )


def test_bad_options_of_pull_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--persist-dir", str(tmp_path), "--config", "/dev/null"]
    assert refused(["pull-list", "127.0.0.1:1/app:v1", "--platform", "amd64", *flags], capsys) == (
        "nri-optimizer pull-list: --platform amd64: expected OS/ARCH, e.g. linux/amd64"
    )
    assert refused(["pull-list", "127.0.0.1:1/app:v1", "--workload", "a/b", *flags], capsys).startswith(
        "nri-optimizer pull-list: --workload a/b: not a valid workload name"
    )
