"""What a realistic workload is (`App`), and how its image is built and cached (`build`).

An image is one layer: the Debian packages of the app unpacked (rootfs), configured, and completed by the app's
own `setup` (its code, its PyPI or npm dependencies, its data). The tarball is cached under
testbed.debs.cache_dir()/apps/images, keyed by everything that goes into it: the resolved package versions, the
app's other downloaded inputs, and the source of the modules that build it. A second build with the same key
is a file lookup; after a change, the downloads are cached too, so that it runs offline.

The same inputs give the same bytes (python-web and node-web, built apart, have one digest), except where a
program run at build time stamps its output: WordPress's database (InnoDB's and WordPress's own timestamps).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from testbed import images

from . import rootfs

PORT_ENV = "PORT"  # every app listens on 127.0.0.1:$PORT (pods share the host's network)


@dataclass(frozen=True)
class App:
    name: str
    packages: tuple[str, ...]  # Debian packages, closed over by apt
    setup: Callable[[Path], None]  # completes the unpacked and configured root
    entrypoint: tuple[str, ...]
    ready_path: str  # an HTTP GET of this answers 200 once the app really works...
    ready_text: str  # ...with a page that contains this
    alternatives: Mapping[str, str] = field(default_factory=dict)  # see rootfs.configure
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    inputs: Callable[[], bytes] = bytes  # what else the image is made from (a lock of versions), for the key
    env: tuple[str, ...] = images.DEFAULT_ENV

    @property
    def image(self) -> str:
        return f"nri-optimizer.bench/{self.name}:1"

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}{self.ready_path}"


def build(app: App, *, cache: Path | None = None) -> Path:
    """The app's image-layout tarball, from the cache or built into it."""
    cache = cache or rootfs.apps_cache()
    cache.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache: two test sessions would otherwise unpack the same root twice, and each
    # would remove the other's image as stale.
    with open(cache / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(app, cache)


def _build(app: App, cache: Path) -> Path:
    packages = rootfs.resolve(app.packages, cache=cache)
    out = cache / "images" / f"{app.name}-{_key(app, packages)}.tar"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-") as tmp:
        root = Path(tmp) / "root"
        rootfs.unpack(rootfs.download(packages, cache=cache), root)
        rootfs.configure(root, alternatives=app.alternatives, users=app.users, groups=app.groups)
        app.setup(root)
        built = images.build_image(
            app.image, Path(tmp) / "image.tar", entrypoint=app.entrypoint, env=app.env, extra_layers=[root], base=False
        )
        for stale in out.parent.glob(f"{app.name}-*.tar"):
            stale.unlink()
        built.rename(out)
    return out


def _key(app: App, packages: list[rootfs.Package]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([app.name, [(p.name, p.version, p.arch) for p in packages]]).encode())
    digest.update(app.inputs())
    # The code that makes the image: this module, rootfs, the app's own module, and the image writer.
    modules = (__name__, rootfs.__name__, app.setup.__module__, images.__name__)
    for module in modules:
        digest.update(Path(str(sys.modules[module].__file__)).read_bytes())
    return digest.hexdigest()[:16]
