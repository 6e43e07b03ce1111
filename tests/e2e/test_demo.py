"""`make demo` (python -m testbed demo): the demo image's exact list, and nothing left behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from testbed import host
from testbed.demo import EXPECTED


def test_demo_prints_the_exact_list_and_leaves_nothing_behind() -> None:
    result = subprocess.run([sys.executable, "-m", "testbed", "demo"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == EXPECTED
    assert "nri-optimizer profile: 8 files, saved to " in result.stderr
    private = re.search(r"running privately in (\S+) \(pid", result.stderr).group(1)
    assert not os.path.exists(private)
    assert [p for p in host.processes() if any(private in arg for arg in p.cmdline)] == []
    with open("/proc/self/mountinfo") as mounts:
        assert [line for line in mounts if private in line] == []
