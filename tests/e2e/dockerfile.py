"""A daemonless build of deploy/Dockerfile: its instructions carried out on a root filesystem, written as an OCI image
with the test bed's writer (testbed.images), for containerd to import.

No registry but the package archives is reachable here, so ``FROM`` cannot pull: each base the project's Dockerfiles
name is made from Debian's packages of the same release instead (benchmarks.prefetch.apps.rootfs), with the same
Python minor version; everything after ``FROM`` runs as written (``RUN`` chrooted, in private mount, pid and network
namespaces). Only the instructions the project's Dockerfiles use are understood; any other is an error, so that a
Dockerfile cannot silently build differently here.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.prefetch.apps import rootfs
from testbed import TestbedError, images

# Base image -> the Debian (rootfs.SUITE) packages that make a stand-in for it. python:3.11-slim-bookworm is Debian 12
# with CPython 3.11, pip and venv; Debian 12's python3 is 3.11 too (in /usr/bin rather than /usr/local/bin).
BASES: dict[str, tuple[str, ...]] = {"python:3.11-slim-bookworm": ("python3", "python3-venv")}


@dataclass
class Recipe:
    base: str = ""
    steps: list[tuple[str, str]] = field(default_factory=list)  # (COPY | RUN | WORKDIR, argument)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: list(images.DEFAULT_ENV))


def parse(text: str) -> Recipe:
    recipe = Recipe()
    for instruction, argument in _instructions(text):
        match instruction:
            case "FROM":
                if argument not in BASES:
                    raise TestbedError(f"FROM {argument}: no stand-in for that base; add it to {__name__}.BASES")
                recipe.base = argument
            case "COPY" | "RUN" | "WORKDIR":
                recipe.steps.append((instruction, argument))
            case "ENTRYPOINT" | "CMD":
                exec_form = json.loads(argument)
                if not (isinstance(exec_form, list) and all(isinstance(a, str) for a in exec_form)):
                    raise TestbedError(f"{instruction} {argument}: only the exec form (a JSON list) is understood")
                setattr(recipe, instruction.lower(), exec_form)
            case "ENV":
                key, _, value = argument.partition("=")
                recipe.env = [e for e in recipe.env if not e.startswith(f"{key}=")] + [f"{key}={value}"]
            case _:
                raise TestbedError(f"{instruction}: an instruction this builder does not carry out")
    if not recipe.base:
        raise TestbedError("no FROM")
    return recipe


def build(dockerfile: Path, context: Path, name: str, out: Path) -> Path:
    """The image of `dockerfile` built in `context`, as an OCI image-layout tarball at `out`, named `name`."""
    recipe = parse(dockerfile.read_text())
    packages = rootfs.resolve(BASES[recipe.base])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".tmp-build-") as tmp:
        root = Path(tmp) / "root"
        rootfs.unpack(rootfs.download(packages), root)
        rootfs.configure(root)
        workdir = "/"
        for instruction, argument in recipe.steps:
            if instruction == "WORKDIR":
                workdir = argument
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif instruction == "COPY":
                *sources, target = shlex.split(argument)
                for source in sources:
                    _copy(context / source, root / target.lstrip("/"))
            else:
                rootfs.run_in(root, f"cd {shlex.quote(workdir)}\n{argument}", what=f"RUN {argument[:60]}")
        return images.build_image(
            name,
            out,
            entrypoint=recipe.entrypoint,
            cmd=recipe.cmd,
            env=recipe.env,
            working_dir=workdir,
            extra_layers=[root],
            base=False,
        )


def _copy(source: Path, target: Path) -> None:
    if not source.exists():
        raise TestbedError(f"COPY: {source} does not exist in the build context")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, argument) per instruction: comments dropped, continuation lines joined."""
    found, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical, pending = pending + line, ""
        instruction, _, argument = logical.strip().partition(" ")
        found.append(
            (instruction.upper(), " ".join(argument.split()) if instruction.upper() == "RUN" else argument.strip())
        )
    return found
