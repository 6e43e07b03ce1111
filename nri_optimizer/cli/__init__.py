"""The ``nri-optimizer`` command: the plugin daemon, or one of the user commands.

Each command is a module with ``main(argv) -> int`` that raises an errors.OptimizerError for anything the user
must fix; this module is the one place that prints it (``prog: message``) and chooses the exit status. A command
whose dependencies come with an extra (``pip install 'nri-optimizer[profile]'``) says so in one line when they are
missing; bench-image runs from a source checkout (it drives the test bed, which is not part of the wheel).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from nri_optimizer.errors import ConfigError, MergeInputError, OptimizerError, ReferenceError, UsageError

# command -> (module, the extra its dependencies come with, or None)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "profile": ("nri_optimizer.cli.profile", "profile"),
    "convert": ("nri_optimizer.cli.convert", None),
    "merge": ("nri_optimizer.cli.merge", None),
    "import-pattern": ("nri_optimizer.cli.import_pattern", None),
    "push-list": ("nri_optimizer.cli.push_list", None),
    "pull-list": ("nri_optimizer.cli.pull_list", None),
    "ls": ("nri_optimizer.cli.ls", None),
    "bench-image": ("benchmarks.prefetch.command", "bench"),
}

EXIT_FAILED = 1
EXIT_USAGE = 2  # bad flags, config or arguments: as argparse does


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        name, args = args[0], args[1:]
        prog = f"nri-optimizer {name}"
        module_name, extra = COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            print(f"{prog}: {_missing(module_name, extra, exc)}", file=sys.stderr)
            return EXIT_FAILED
        return run_command(prog, module.main, args)
    # The daemon never speaks TLS, yet asyncio loads OpenSSL to offer it: 4.5 MB of RSS on every node. Keep it
    # out of the daemon only (profile may wait on an https URL); decided before anything imports asyncio.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from nri_optimizer.cli.daemon import run_daemon

    return run_command("nri-optimizer", run_daemon, args)


def run_command(prog: str, command: Callable[[list[str]], int], argv: list[str]) -> int:
    """Run a command's main; an OptimizerError becomes one line on stderr and an exit status."""
    try:
        return command(argv)
    except (ConfigError, UsageError, ReferenceError, MergeInputError) as exc:  # what the user gave is wrong
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OptimizerError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _missing(module_name: str, extra: str | None, exc: ModuleNotFoundError) -> str:
    if module_name.startswith("benchmarks."):
        return "runs from a source checkout of nri-optimizer (make bench-image), not from the installed package"
    if extra is not None:
        return f"needs {exc.name}, which comes with an extra: pip install 'nri-optimizer[{extra}]'"
    raise exc
