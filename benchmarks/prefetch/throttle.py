"""A slow link on loopback: the local registry's replies (source port = its port) shaped to a rate with tc.

Only that port is shaped: htb's default class passes all other loopback traffic unshaped. We refuse to touch a
lo that already has a root qdisc (someone else's), and remove only the one we added.
"""

from __future__ import annotations

import shutil
import subprocess

from nri_optimizer.errors import OptimizerError


class ThrottleError(OptimizerError):
    pass


class Throttle:
    def __init__(self, rate: str, port: int) -> None:
        self.rate = rate
        self.port = port
        self._added = False

    def __enter__(self) -> Throttle:
        if shutil.which("tc") is None:
            raise ThrottleError("tc not found: install iproute2 to throttle, or run without --throttle/throttle:")
        current = _tc("qdisc", "show", "dev", "lo")
        if not current.startswith("qdisc noqueue"):
            raise ThrottleError(f"lo already has a queueing discipline ({current.strip()}); not replacing it")
        try:
            _tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1")
            self._added = True
            _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", "100gbit")
            # lo's MTU (64 KiB) and segmentation offload pass 64 KiB packets: the bucket must hold a few.
            _tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb", "rate", self.rate,
                "ceil", self.rate, "burst", "256kb", "cburst", "256kb")
            _tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "sport", str(self.port), "0xffff", "flowid", "1:2")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._added:
            self._added = False
            _tc("qdisc", "del", "dev", "lo", "root")


def _tc(*args: str) -> str:
    result = subprocess.run(["tc", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ThrottleError(f"tc {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout
