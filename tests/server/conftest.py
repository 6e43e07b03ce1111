"""Fixtures for the trace server tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.server.helpers import FakeContainer, MakeContainer


@pytest.fixture(params=["fid", "fd"])
def event_mode(request: pytest.FixtureRequest) -> str:
    """Each way the server receives events, by its name (a fake container's tmpfs root takes both)."""
    return str(request.param)


@pytest.fixture
def make_container(tmp_path: Path) -> Iterator[MakeContainer]:
    """make_container(files, workload[, setup][, overlay=]): a started FakeContainer at its gate; killed at
    teardown."""
    containers: list[FakeContainer] = []

    def make(files: Sequence[str], workload: str, setup: str = ":", *, overlay: bool = False) -> FakeContainer:
        workdir = tmp_path / f"container{len(containers)}"
        workdir.mkdir()
        containers.append(FakeContainer(workdir, files, workload, setup, overlay=overlay))
        return containers[-1]

    yield make
    for container in containers:
        container.kill()
