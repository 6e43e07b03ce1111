"""``nri-optimizer`` with no subcommand: the NRI plugin daemon.

containerd launches a pre-launched plugin with no arguments, no PATH and /dev/null for stdio, and tells it
who it is through the environment (NRI_PLUGIN_SOCKET, NRI_PLUGIN_NAME, NRI_PLUGIN_IDX). Run by hand or by
systemd, the daemon connects to the NRI socket instead (external mode) and reads its config file itself.
Flags and config keys are upstream's (nydus-snapshotter's optimizer-nri-plugin), with the same defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

from nri_optimizer import config as cfg
from nri_optimizer import logs
from nri_optimizer.nri.api import Identity, identity_from_executable
from nri_optimizer.nri.stub import Stub
from nri_optimizer.plugin import Plugin

log = logging.getLogger(__name__)

DEFAULT_NAME = "optimizer-nri-plugin"
DEFAULT_IDX = "02"
EXIT_CONFIG = 2


def _bool(text: str) -> bool:
    # Go's flag syntax, as upstream's flags take it: --readable, --readable=true, --readable=false.
    lowered = text.lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _comma_list(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def daemon_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nri-optimizer",
        description="containerd NRI plugin that records the files each container reads as it starts, in order.",
        epilog="Subcommands: profile IMAGE, convert, merge, ls, bench-image (see nri-optimizer SUBCOMMAND --help). "
        "With none, this runs the plugin daemon.",
        argument_default=argparse.SUPPRESS,  # absent flags leave the file's value alone
    )
    parser.add_argument("--name", help=f"plugin name to register with NRI (default: {DEFAULT_NAME})")
    parser.add_argument("--idx", help=f"plugin index, two digits (default: {DEFAULT_IDX})")
    parser.add_argument(
        "--events", type=_comma_list, help="events to subscribe to (default: StartContainer,StopContainer)"
    )
    parser.add_argument("--server-path", dest="server_path", help="optimizer-server executable")
    parser.add_argument("--persist-dir", dest="persist_dir", help="directory for the accessed-file lists")
    parser.add_argument("--readable", type=_bool, nargs="?", const=True, help="human units in the CSV file")
    parser.add_argument("--timeout", type=int, help="seconds to trace each container; 0 traces until it stops")
    parser.add_argument(
        "--overwrite",
        type=_bool,
        nargs="?",
        const=True,
        help="upstream's spelling of --on-repeat replace (true) or keep (false)",
    )
    repeat = parser.add_argument_group('images traced again (README.md "Result files")')
    repeat.add_argument(
        "--on-repeat",
        dest="on_repeat",
        choices=cfg.ON_REPEAT,
        help="what a new run does to an image's result: keep the first (default), replace it, or merge the latest runs",
    )
    repeat.add_argument(
        "--merge-window",
        dest="merge_window",
        type=int,
        help="runs merged into the list with --on-repeat merge (default: 5)",
    )
    repeat.add_argument(
        "--workload-key",
        dest="workload_key",
        help='one list per workload: "container-name" or "label:KEY" (a pod label)',
    )
    parser.add_argument("--socket", help=f"NRI socket to connect to in external mode (default: {cfg.Config.socket})")
    parser.add_argument("--config", help=f"TOML config file (default: {cfg.DEFAULT_CONFIG_FILE} if it exists)")
    parser.add_argument("--log-level", dest="log_level", help="debug, info, warning or error (default: info)")
    parser.add_argument("--log-file", dest="log_file", help="also log to this file (default: stderr only)")
    chosen = parser.add_argument_group("which containers are traced (patterns: comma-separated, shell-style)")
    chosen.add_argument("--mode", help='"all" (default) or "opt-in" (only pods annotated to be traced)')
    for key, what in (("namespace", "pod namespaces"), ("image", "full image names")):
        chosen.add_argument(
            f"--{key}-include", dest=f"{key}_include", type=_comma_list, help=f"trace only {what} matching one of these"
        )
        chosen.add_argument(
            f"--{key}-exclude",
            dest=f"{key}_exclude",
            type=_comma_list,
            help=f"never trace {what} matching one of these",
        )
    parser.add_argument(
        "--metrics-address",
        dest="metrics_address",
        help="serve Prometheus metrics on this unix socket path or IP:PORT (default: none)",
    )
    parser.add_argument(
        "--stall-timeout",
        dest="stall_timeout",
        type=int,
        help="seconds a silent trace server may leave a request unanswered before it is replaced",
    )
    return parser


def _go_style(argv: Sequence[str]) -> list[str]:
    """Upstream's flag library also takes one dash (-persist-dir); argparse wants two."""
    return ["-" + arg if re.match(r"-[a-z][a-z-]+(=|$)", arg) else arg for arg in argv]


def identity(flags: dict[str, Any]) -> Identity:
    from_exe = identity_from_executable(sys.argv[0])
    name = flags.get("name") or os.environ.get("NRI_PLUGIN_NAME") or (from_exe and from_exe.name) or DEFAULT_NAME
    idx = flags.get("idx") or os.environ.get("NRI_PLUGIN_IDX") or (from_exe and from_exe.idx) or DEFAULT_IDX
    return Identity(name, idx)


def run_daemon(argv: Sequence[str]) -> int:
    flags = vars(daemon_parser().parse_args(_go_style(argv)))
    socket_fd = os.environ.get("NRI_PLUGIN_SOCKET")
    prelaunched = socket_fd is not None
    try:
        plugin_identity = identity(flags)
        config = cfg.build({}, {}) if prelaunched else cfg.load_config(flags)
    except (cfg.ConfigError, ValueError) as exc:
        print(f"nri-optimizer: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if prelaunched:
        logs.hold()  # until Configure tells us where to log
    else:
        try:
            logs.setup(cfg.log_level(config), config.log_file)
        except OSError as exc:
            print(f"nri-optimizer: log_file: cannot open {config.log_file}: {exc.strerror}", file=sys.stderr)
            return EXIT_CONFIG
    optimizer = Plugin(config, prelaunched=prelaunched)
    stub = Stub(optimizer, plugin_identity)
    log.info(
        "starting %s-%s (%s mode, pid %d)",
        plugin_identity.idx,
        plugin_identity.name,
        "pre-launched" if prelaunched else "external",
        os.getpid(),
    )

    async def serve() -> None:
        try:
            if prelaunched:
                await stub.run_prelaunched(int(socket_fd or "0"))
            else:
                await stub.run_external(config.socket)
        finally:
            await optimizer.shutdown()

    # What start-up made lives as long as the daemon: out of the collector's sight, so that collections, which
    # the per-file garbage of a trace triggers, do not walk every module's objects each time.
    gc.freeze()
    try:
        asyncio.run(_until_signal(serve()))
    finally:
        if prelaunched and not optimizer.configured:
            logs.setup(logging.INFO, logs.PRELAUNCHED_LOG_FILE, stderr=False)  # write out what was held
        log.info("stopped")
    return 0


async def _until_signal(main: Any) -> None:
    """Run ``main`` until it returns or SIGTERM/SIGINT arrives."""
    task = asyncio.ensure_future(main)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        log.info("terminating on signal")
