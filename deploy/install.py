"""``make install-optimizer`` and ``make uninstall-optimizer``: upstream's install layout, our own venv.

The Makefile runs this from the source tree with the interpreter the venv is to be based on; it needs
only the standard library. install puts:

- a venv at VENV holding the wheels ``make optimizer`` built (no network, no link to the source tree);
- the plugin launcher at PLUGIN_DIR/02-optimizer-nri-plugin and the server launcher at BINDIR/optimizer-server;
- the config at CONF_DIR/02-optimizer-nri-plugin.conf, replacing an existing one only if it is exactly
  what the previous install wrote (otherwise the new default goes beside it as ``.conf.new``);
- the results directory PERSIST_DIR, and the systemd unit (not enabled) in SYSTEMD_DIR.

Every path written into an installed file (the launchers' interpreter, server_path, persist_dir, the
unit's ExecStart) names where things really are, DESTDIR included: a venv cannot be moved, so a DESTDIR
install is a working tree rooted at DESTDIR (the tests run it in place), not a staging area to copy.

A manifest in the venv records each file with its hash and each directory install created. uninstall
removes the files still as installed (a changed one is kept and named), the venv, and those directories
when empty: it never removes anything else, results included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deploy.launcher import launcher_text
from nri_optimizer.errors import OptimizerError

SOURCE = Path(__file__).resolve().parents[1]
CONF_TEMPLATE = SOURCE / "etc" / "nri" / "conf.d" / "02-optimizer-nri-plugin.conf"
UNIT_TEMPLATE = SOURCE / "systemd" / "nri-optimizer.service"
PLUGIN = "02-optimizer-nri-plugin"
SERVER = "optimizer-server"
MANIFEST = "install-manifest.json"

# The default paths the shipped config and unit name; install writes this install's paths instead.
DEFAULT_SERVER = "/usr/local/bin/optimizer-server"
DEFAULT_PERSIST_DIR = "/opt/nri/optimizer/results"
DEFAULT_VENV = "/opt/nri-optimizer/venv"
DEFAULT_CONF_DIR = "/etc/nri/conf.d"
DEFAULT_PLUGIN_DIR = "/opt/nri/plugins"


class InstallError(OptimizerError):
    pass


@dataclass(frozen=True)
class Layout:
    """Where each piece goes, DESTDIR included."""

    venv: Path
    plugin_dir: Path
    bindir: Path
    conf_dir: Path
    persist_dir: Path
    systemd_dir: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def conf(self) -> Path:
        return self.conf_dir / f"{PLUGIN}.conf"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Manifest:
    path: Path
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256 of what install wrote there
    dirs: list[str] = field(default_factory=list)  # directories install created

    @classmethod
    def load(cls, venv: Path) -> Manifest | None:
        path = venv / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return cls(path, data["files"], data["dirs"])

    def save(self) -> None:
        self.path.write_text(json.dumps({"files": self.files, "dirs": self.dirs}, indent=1) + "\n", encoding="utf-8")

    def as_installed(self, path: Path) -> bool:
        """Whether path holds exactly what install wrote there."""
        try:
            return self.files.get(str(path)) == _digest(path.read_bytes())
        except OSError:
            return False

    def make_dirs(self, path: Path) -> None:
        """mkdir -p, recording the directories it creates: uninstall removes those (when empty) and no others."""
        if path.is_dir():
            return
        self.make_dirs(path.parent)
        path.mkdir()
        self.dirs.append(str(path))

    def put(self, path: Path, text: str, mode: int) -> None:
        # Upstream's files sit at the same paths: a drop-in replaces them (uninstall does not bring them back).
        if os.path.lexists(path) and str(path) not in self.files:
            print(f"replacing {path}, which install did not write")
        self.make_dirs(path.parent)
        temp = path.with_name(f"{path.name}.tmp")
        temp.write_text(text, encoding="utf-8")
        temp.chmod(mode)
        os.replace(temp, path)
        self.files[str(path)] = _digest(text.encode())
        print(f"installed {path}")


def relocate(text: str, paths: dict[str, str], template: Path) -> str:
    """text with each default path replaced by this install's, in one pass: a replacement (under DESTDIR)
    contains the default it replaces, so replacing one after another would prefix twice."""
    if missing := [path for path in paths if path not in text]:
        raise InstallError(f"{template} no longer names {', '.join(missing)}: update {__name__}")
    return re.sub("|".join(map(re.escape, paths)), lambda match: paths[match.group()], text)


def install(layout: Layout, python: str, pip_python: str, wheelhouse: Path) -> None:
    wheels = sorted(str(wheel) for wheel in wheelhouse.glob("*.whl"))
    if not any(Path(wheel).name.startswith("nri_optimizer-") for wheel in wheels):
        raise InstallError(f"no nri_optimizer wheel in {wheelhouse}: run make optimizer first")
    manifest = Manifest.load(layout.venv)
    if manifest is None:
        if layout.venv.exists():
            raise InstallError(
                f"{layout.venv} exists and was not made by make install-optimizer: "
                "remove it or choose another PREFIX_VENV"
            )
        manifest = Manifest(layout.venv / MANIFEST)
    else:
        # A fresh venv each time: nothing of an older version lingers in it.
        shutil.rmtree(layout.venv)
    manifest.make_dirs(layout.venv.parent)
    layout.venv.mkdir()  # not recorded as a directory: uninstall removes the venv whole
    manifest.save()
    try:
        subprocess.run([python, "-m", "venv", "--without-pip", str(layout.venv)], check=True)
        # The build venv's pip installs into the new one, which so needs no pip of its own.
        subprocess.run(
            [pip_python, "-m", "pip", "--python", str(layout.python), "install", "--quiet", "--no-index", *wheels],
            check=True,
        )
        print(f"installed {layout.venv}")
        python_path = str(layout.python)
        manifest.put(layout.plugin_dir / PLUGIN, launcher_text(python_path), 0o755)
        server = layout.bindir / SERVER
        manifest.put(server, launcher_text(python_path, "optimizer_server.__main__"), 0o755)

        conf_text = relocate(
            CONF_TEMPLATE.read_text(encoding="utf-8"),
            {DEFAULT_SERVER: str(server), DEFAULT_PERSIST_DIR: str(layout.persist_dir)},
            CONF_TEMPLATE,
        )
        if not os.path.lexists(layout.conf) or manifest.as_installed(layout.conf):
            manifest.put(layout.conf, conf_text, 0o644)
        else:
            new = layout.conf.with_name(f"{layout.conf.name}.new")
            manifest.put(new, conf_text, 0o644)
            print(f"kept {layout.conf}: it is not the config the last install wrote; compare it with {new}")

        manifest.make_dirs(layout.persist_dir)
        unit = layout.systemd_dir / "nri-optimizer.service"
        manifest.put(
            unit,
            relocate(
                UNIT_TEMPLATE.read_text(encoding="utf-8"),
                {
                    DEFAULT_VENV: str(layout.venv),
                    DEFAULT_CONF_DIR: str(layout.conf_dir),
                    DEFAULT_PERSIST_DIR: str(layout.persist_dir),
                    DEFAULT_PLUGIN_DIR: str(layout.plugin_dir),
                },
                UNIT_TEMPLATE,
            ),
            0o644,
        )
    finally:
        manifest.save()
    print(f"""
Installed as a pre-launched plugin (upstream's way): containerd starts {layout.plugin_dir / PLUGIN} itself.
Restart containerd to load it (containerd 1.7: enable NRI first, see README.md).
{unit} is not enabled: it runs the plugin in external mode instead. To switch, remove
{layout.plugin_dir / PLUGIN}, set disable_connections = false in containerd's NRI section, then
systemctl daemon-reload && systemctl enable --now nri-optimizer""")


def uninstall(venv: Path) -> None:
    manifest = Manifest.load(venv)
    if manifest is None:
        print(f"nothing to uninstall: no {venv / MANIFEST}")
        return
    kept: list[str] = []
    for name in manifest.files:
        path = Path(name)
        if manifest.as_installed(path):
            path.unlink()
            print(f"removed {path}")
        elif os.path.lexists(path):
            kept.append(name)
            print(f"kept {path}: changed since install")
    shutil.rmtree(venv)
    print(f"removed {venv}")
    for name in sorted(manifest.dirs, key=lambda d: d.count("/"), reverse=True):  # children first
        try:
            os.rmdir(name)
            print(f"removed {name}")
        except FileNotFoundError:
            pass
        except OSError:
            # Named only when nothing kept below it explains why (results, say).
            if not any(other.startswith(f"{name}/") for other in kept):
                print(f"kept {name}: not empty")
            kept.append(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.install", description=__doc__.splitlines()[0])
    parser.add_argument("--destdir", default="", help="prefix for every directory below (default: none)")
    parser.add_argument("--venv", default=DEFAULT_VENV)
    commands = parser.add_subparsers(dest="command", required=True)
    install_command = commands.add_parser("install")
    install_command.add_argument("--plugin-dir", default=DEFAULT_PLUGIN_DIR)
    install_command.add_argument("--bindir", default=os.path.dirname(DEFAULT_SERVER))
    install_command.add_argument("--conf-dir", default=DEFAULT_CONF_DIR)
    install_command.add_argument("--persist-dir", default=DEFAULT_PERSIST_DIR)
    install_command.add_argument("--systemd-dir", default="/etc/systemd/system")
    install_command.add_argument("--pip-python", required=True, help="an interpreter with pip, to install the wheels")
    install_command.add_argument("--wheelhouse", type=Path, required=True, help="the wheels make optimizer built")
    commands.add_parser("uninstall")
    args = parser.parse_args(argv)

    def where(path: str) -> Path:
        if not os.path.isabs(path):
            parser.error(f"{path}: install directories must be absolute")
        return Path(os.path.abspath(args.destdir) + path if args.destdir else path)

    try:
        if args.command == "uninstall":
            uninstall(where(args.venv))
        else:
            layout = Layout(
                where(args.venv),
                where(args.plugin_dir),
                where(args.bindir),
                where(args.conf_dir),
                where(args.persist_dir),
                where(args.systemd_dir),
            )
            install(layout, sys.executable, args.pip_python, args.wheelhouse)
    except (InstallError, subprocess.CalledProcessError) as error:
        print(f"{parser.prog} {args.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
