"""nri-optimizer: a containerd NRI plugin that records the files each container reads as it starts."""

import os
import re
import sys


def _starting_the_daemon(argv: list[str]) -> bool:
    """Whether this process is the plugin daemon: started as nri-optimizer (or as containerd's NN-name
    copy) with flags only, no subcommand."""
    program = os.path.basename(argv[0]) if argv else ""
    # ("-m": python -m nri_optimizer, while the package is being found)
    named = program in ("nri-optimizer", "__main__.py", "-m") or re.fullmatch(r"[0-9]{2}-.+", program) is not None
    return named and (len(argv) < 2 or argv[1].startswith("-"))


# The daemon never speaks TLS, yet asyncio loads OpenSSL to offer it: 4.5 MB of RSS on every node. Keep it
# out of the daemon only (profile may wait on an https URL). Decided here, before anything imports asyncio.
if _starting_the_daemon(sys.argv):
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
