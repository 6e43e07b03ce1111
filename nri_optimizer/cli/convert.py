"""``nri-optimizer convert``: build a nydus image whose prefetch table is a recorded list.

It runs ``nydusify convert --source S --target T --fs-version N --prefetch-patterns`` with the list on
stdin, as the seed document does. Without nydusify it says so and prints the exact command to run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

from nri_optimizer import config as cfg
from nri_optimizer.errors import UsageError
from nri_optimizer.results import reference


def nydusify_command(nydusify: str, source: str, target: str, fs_version: str, extra: Sequence[str]) -> list[str]:
    return [nydusify, "convert", "--source", source, "--target", target, "--fs-version", fs_version,
            *extra, "--prefetch-patterns"]


def default_list(persist_dir: str, source: str) -> str:
    """Where the plugin saved the list for ``source`` (see nri_optimizer.results.store)."""
    image = reference.parse(source)
    return os.path.join(persist_dir, image.result_dir, image.result_name)


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="nri-optimizer convert",
        description="Convert an image to nydus, prefetching the files of a recorded list first.",
        epilog="Arguments after -- go to nydusify convert as they are (e.g. -- --platform linux/amd64).",
    )
    parser.add_argument("--source", required=True, help="the OCI image to convert (as nydusify takes it)")
    parser.add_argument("--target", required=True, help="the nydus image to push")
    parser.add_argument("--fs-version", default="6", choices=["5", "6"], help="RAFS version (default: %(default)s)")
    parser.add_argument("--list", dest="list_file", help="the recorded list (default: the plugin's result for "
                        "--source under persist_dir)")
    parser.add_argument("--config", help=f"TOML config file, for persist_dir (default: {cfg.DEFAULT_CONFIG_FILE})")
    parser.add_argument("--persist-dir", dest="persist_dir", default=argparse.SUPPRESS)
    parser.add_argument("--nydusify", default="nydusify", help="nydusify executable (default: from PATH)")
    own, extra = _split_extra(argv)
    args = parser.parse_args(own)
    if args.list_file is None:
        flags = {key: value for key, value in vars(args).items() if key in ("config", "persist_dir")}
        args.list_file = default_list(cfg.load_config(flags).persist_dir, args.source)
    if not os.path.isfile(args.list_file):
        raise UsageError(
            f"no recorded list at {args.list_file}; record one first "
            f"(nri-optimizer profile {args.source}) or pass --list"
        )
    nydusify = shutil.which(args.nydusify)
    command = nydusify_command(nydusify or args.nydusify, args.source, args.target, args.fs_version, extra)
    printable = f"{shlex.join(command)} < {shlex.quote(args.list_file)}"
    if nydusify is None:
        print(f"nri-optimizer convert: {args.nydusify} is not installed (it comes with nydus: "
              "https://github.com/dragonflyoss/nydus/releases); run this where it is:", file=sys.stderr)
        print(printable)
        return 1
    print(f"nri-optimizer convert: {printable}", file=sys.stderr)
    with open(args.list_file, "rb") as patterns:
        return subprocess.run(command, stdin=patterns, check=False).returncode


def _split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1 :]
    return argv, []
