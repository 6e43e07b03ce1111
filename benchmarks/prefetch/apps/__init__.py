"""Realistic workloads for bench-image, built offline from Debian's archive and the language registries.

Three HTTP apps of hundreds of MB and thousands of files each, of which a start reads a small share, as in real
life: `wordpress` (Apache, mod_php and MariaDB in one container), `python-web` (Flask, SQLAlchemy, pandas,
SciPy on gunicorn) and `node-web` (Express with npm's heavyweights). Each listens on 127.0.0.1:$PORT and is ready
when a GET of `App.url(port)` answers 200 with `App.ready_text` in the page.

Modules: app (what an app is; building and caching its image), rootfs (a Debian root from the archive's
packages), and one module per app.
"""

from __future__ import annotations

from pathlib import Path

from . import node_web, python_web, wordpress
from .app import PORT_ENV, App
from .app import build as build_app

APPS: dict[str, App] = {app.name: app for app in (wordpress.APP, python_web.APP, node_web.APP)}

__all__ = ["APPS", "PORT_ENV", "App", "build"]


def build(name: str, *, cache: Path | None = None) -> Path:
    """The image-layout tarball of app `name`, built on first use and cached (see app.build)."""
    return build_app(APPS[name], cache=cache)
