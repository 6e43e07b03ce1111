"""The executable containerd launches from plugin_path: no arguments, no PATH, a fixed environment.

So it names its interpreter absolutely, runs it isolated (-I: no PYTHON* variables, no user site, no
script directory on sys.path), and takes its identity from its own file name (``NN-name``).
"""

from __future__ import annotations

import os
import sys


def launcher_text(python: str, module: str = "nri_optimizer.cli") -> str:
    """A script running ``module``'s ``main()`` (the plugin's by default; the server's is
    ``optimizer_server.__main__``)."""
    if not os.path.isabs(python):
        raise ValueError(f"the launcher needs an absolute interpreter path, not {python!r}")
    return f"#!{python} -I\nimport sys\n\nfrom {module} import main\n\nsys.exit(main())\n"


def write_launcher(path: str, python: str = sys.executable) -> None:
    temp = f"{path}.tmp"
    with open(temp, "w", encoding="utf-8") as out:
        out.write(launcher_text(python))
    os.chmod(temp, 0o755)
    os.replace(temp, path)
