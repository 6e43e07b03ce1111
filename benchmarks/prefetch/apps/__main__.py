"""`python -m benchmarks.prefetch.apps [NAME ...]`: build the apps' images (all by default), print where they are.

Each line: the app, the image name CRI knows it by, the tarball (an `archive:` for bench-image's config), the URL
path and text that say it is ready, and the port variable it listens on.
"""

from __future__ import annotations

import argparse
import sys

from testbed import TestbedError

from . import APPS, PORT_ENV, build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prefetch.apps", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(sorted(APPS))} (default: all)")
    names = parser.parse_args(argv).names or sorted(APPS)
    if unknown := sorted(set(names) - APPS.keys()):
        parser.error(f"no app {', '.join(unknown)}: choose from {', '.join(sorted(APPS))}")
    for name in names:
        app = APPS[name]
        try:
            tarball = build(name)
        except TestbedError as error:
            print(f"{name}: {error}", file=sys.stderr)
            return 1
        print(f"{name}\t{app.image}\t{tarball}\tready: GET {app.ready_path} has {app.ready_text!r}\tport: ${PORT_ENV}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
