"""The tree's layers, read from the code: which folder may import which, and the README's Layout section.

`python -m tests.layout` rewrites the README's Layout section from the packages' docstrings;
tests/unit/test_layout.py checks that the section is current and that imports go one way.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# What each part of the tree may import from the project (its own part always). Read top-down: a part only
# reaches the parts listed after it, so no cycle can form between parts.
ALLOWED: dict[str, set[str]] = {
    "tests": {"benchmarks", "testbed", "deploy", "nri_optimizer", "optimizer_server"},
    "benchmarks": {"testbed", "deploy", "nri_optimizer", "optimizer_server.protocol"},  # cost.instructions speaks it
    "testbed": {"deploy", "nri_optimizer"},
    "deploy": {"nri_optimizer.errors"},
    "nri_optimizer.cli": {"nri_optimizer", "benchmarks.prefetch.command"},  # bench-image: lazily, from a checkout
    "nri_optimizer.plugin": {
        "nri_optimizer.config",
        "nri_optimizer.logs",
        "nri_optimizer.metrics",
        "nri_optimizer.publish",
        "nri_optimizer.selection",
        "nri_optimizer.trace",
        "nri_optimizer.results",
        "nri_optimizer.nri",
        "nri_optimizer.errors",
    },
    "nri_optimizer.nydus": {
        "nri_optimizer.oci",
        "nri_optimizer.results",
        "nri_optimizer.cache",
        "nri_optimizer.errors",
    },
    "nri_optimizer.cache": set(),
    "nri_optimizer.oci": {"nri_optimizer.results", "nri_optimizer.errors"},  # artifacts: lists in registries
    "nri_optimizer.config": {"nri_optimizer.selection", "nri_optimizer.nri.api", "nri_optimizer.errors"},
    "nri_optimizer.metrics": {"nri_optimizer.errors"},
    "nri_optimizer.publish": {"nri_optimizer.metrics", "nri_optimizer.selection"},
    "nri_optimizer.selection": {"nri_optimizer.errors"},
    "nri_optimizer.trace": {"nri_optimizer.results", "nri_optimizer.errors", "optimizer_server.protocol"},
    "nri_optimizer.cri": {"nri_optimizer.errors"},
    "nri_optimizer.results": {"nri_optimizer.errors"},
    "nri_optimizer.nri": {"nri_optimizer.errors"},
    "nri_optimizer.logs": set(),
    "nri_optimizer.errors": set(),
    "nri_optimizer.__main__": {"nri_optimizer.cli"},
    "nri_optimizer": set(),  # the package's __init__: nothing, so that importing it costs nothing
    "optimizer_server": set(),
}
PROJECT = ("nri_optimizer", "optimizer_server", "testbed", "benchmarks", "deploy", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str | None:
    """The most specific key of ALLOWED that module belongs to."""
    keys = [key for key in ALLOWED if module == key or module.startswith(key + ".")]
    return max(keys, key=len) if keys else None


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import of a project module in path, at any depth (lazy imports too)."""
    package = module_name(path).rpartition(".")[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PROJECT:
                yield node.lineno, name


def violations() -> list[str]:
    found = []
    for path in sorted(ROOT.glob("**/*.py")):
        if path.is_relative_to(ROOT / ".venv") or path.is_relative_to(ROOT / "build") or "proto" in path.parts:
            continue
        module = module_name(path)
        if module.split(".")[0] not in PROJECT:
            continue
        own = part_of(module)
        assert own is not None, f"{module}: add its part of the tree to ALLOWED"
        for line, target in imports(path):
            if part_of(target) == own:
                continue
            if not any(target == allowed or target.startswith(allowed + ".") for allowed in ALLOWED[own]):
                found.append(
                    f"{path.relative_to(ROOT)}:{line}: {own} imports {target}; if that direction is meant, "
                    "declare it in tests/layout.py ALLOWED"
                )
    return found


def _summary(directory: Path) -> str:
    """The first sentence of a package's docstring, on one line."""
    init = directory / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) if init.exists() else None
    if not doc:
        raise SystemExit(f"{init.relative_to(ROOT)}: a package needs a docstring saying what it is for")
    text = " ".join(doc.split())
    return re.split(r"(?<=\.)\s", text, maxsplit=1)[0].rstrip(".")


# Folders that are not packages, and what they are for.
PLAIN_FOLDERS = {
    "proto": "the NRI and ttrpc protocol definitions the generated modules come from (make proto)",
    "etc/nri/conf.d": "the plugin's default config, as upstream installs it",
    "systemd": "the unit for external mode",
    "examples": "configs to start from (bench-image)",
    "docs": "the benchmark report (docs/benchmarks.md) and its plots",
    ".ci": "what CI runs: exactly the README's test command",
}


def layout() -> str:
    lines = ["```"]
    packages = ["nri_optimizer", "optimizer_server", "testbed", "benchmarks", "deploy", "tests"]
    for top in packages:
        lines.append(f"{top + '/':<28}{_summary(ROOT / top)}")
        for sub in sorted(p for p in (ROOT / top).iterdir() if (p / "__init__.py").exists() and p.name != "proto"):
            lines.append(f"  {sub.name + '/':<26}{_summary(sub)}")
    for folder, purpose in PLAIN_FOLDERS.items():
        lines.append(f"{folder + '/':<28}{purpose}")
    lines.append("```")
    return "\n".join(lines)


SECTION = re.compile(r"(## Layout\n.*?\n)(```\n.*?\n```)()", re.S)  # the section's first fenced block


def current_section() -> str:
    match = SECTION.search(README.read_text())
    if match is None:
        raise SystemExit("README.md has no '## Layout' section")
    return match.group(2)


def main() -> int:
    text = README.read_text()
    if SECTION.search(text) is None:
        raise SystemExit("README.md has no '## Layout' section")
    README.write_text(SECTION.sub(lambda m: m.group(1) + layout() + m.group(3), text, count=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
