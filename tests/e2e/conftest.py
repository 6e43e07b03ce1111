"""Fixtures for tests against a real containerd (2.1 and 1.7), fetched from Debian into the cache.

Every test here is marked `e2e`. They need root; without it, or without the binaries, they fail
with the reason (a skipped e2e suite would look like a passing one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed import TestbedError, debs, images
from testbed.bed import MakeContainerd, Testbed
from testbed.containerd import Containerd

FLAVOURS = ["2.1", "1.7"]
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark only ours.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@dataclass(frozen=True)
class TestImages:
    __test__ = False

    pause: Path
    busybox: Path


@pytest.fixture(scope="session")
def runtime() -> Callable[[str], debs.Runtime]:
    """Flavour -> fetched runtime, once per session; fails (never skips) when that is impossible."""
    if os.geteuid() != 0:
        pytest.fail("e2e tests run a real containerd and need root: run them as root (e.g. in CI or a VM)")
    fetched: dict[str, debs.Runtime] = {}

    def get(flavour: str) -> debs.Runtime:
        if flavour not in fetched:
            try:
                fetched[flavour] = debs.fetch_runtime(flavour)
            except TestbedError as error:
                pytest.fail(f"cannot get containerd {flavour}: {error}")
        return fetched[flavour]

    return get


@pytest.fixture(scope="session")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> TestImages:
    out = tmp_path_factory.mktemp("images")
    try:
        return TestImages(
            pause=images.build_pause_image(out / "pause.tar"),
            busybox=images.build_busybox_image(out / "busybox.tar"),
        )
    except TestbedError as error:
        pytest.fail(f"cannot build the test images: {error}")


@pytest.fixture
def make_containerd(runtime: Callable[[str], debs.Runtime], test_images: TestImages) -> Iterator[MakeContainerd]:
    """Factory: a started containerd of a flavour, images imported; torn down and checked after the test."""
    made: list[Containerd] = []

    def make(
        flavour: str,
        *,
        nri: bool = True,
        nri_socket: Path | None = None,
        plugin_path: Path | None = None,
        plugin_config_path: Path | None = None,
        snapshotter: str = "overlayfs",
    ) -> Testbed:
        ctd = Containerd(
            runtime(flavour),
            nri=nri,
            nri_socket=nri_socket,
            nri_plugin_path=plugin_path,
            nri_plugin_config_path=plugin_config_path,
            snapshotter=snapshotter,
        )
        made.append(ctd)
        ctd.start()
        ctd.import_image(test_images.pause)
        ctd.import_image(test_images.busybox)
        return Testbed(ctd)

    yield make
    problems = []
    for ctd in made:
        try:
            ctd.close()
        except TestbedError as error:
            problems.append(str(error))
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(params=FLAVOURS, ids=[f"containerd-{f}" for f in FLAVOURS])
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def containerd(make_containerd: MakeContainerd, flavour: str) -> Testbed:
    """A started containerd (each flavour in turn) with NRI enabled on private dirs."""
    return make_containerd(flavour)
