"""Give up every capability the server does not use, for good, before it serves anything.

The server runs as root because containerd's plugin does. What it needs of root: CAP_SYS_ADMIN
(fanotify_init, mount marks, an unlimited queue), CAP_SYS_PTRACE (opening another process's
/proc/PID/root), CAP_NET_ADMIN (listening to the kernel's process events) and CAP_DAC_READ_SEARCH
(open_by_handle_at: fid mode reaches directories and files by the handles its events carry, never by a
path). Everything else leaves the effective, permitted, inheritable and ambient sets and the bounding set,
and no_new_privs keeps an exec from getting anything back.

Dropping from the bounding set takes CAP_SETPCAP, which the unit and the DaemonSet do not grant: they bound the
plugin, and so the server, to exactly the four already. So only what is still in the bounding set is dropped from
it; where that is something and CAP_SETPCAP is missing, the bounding set keeps it, out of reach all the same (not
permitted, and no exec can gain it under no_new_privs).
"""

from __future__ import annotations

from optimizer_server.libc import check, ffi, lib

CAP_DAC_READ_SEARCH = 2
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_SYS_PTRACE = 19
CAP_SYS_ADMIN = 21
KEPT = (CAP_DAC_READ_SEARCH, CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_ADMIN)

_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"


def kept_mask() -> int:
    return sum(1 << cap for cap in KEPT)


def drop() -> None:
    """Raises OSError if the kernel refuses (e.g. not root): the caller decides whether to go on."""
    with open(_CAP_LAST_CAP_FILE, encoding="ascii") as last:
        last_cap = int(last.read())
    bounding = [
        cap for cap in range(last_cap + 1) if cap not in KEPT and lib.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) == 1
    ]
    if bounding and _own("CapEff") & (1 << CAP_SETPCAP):
        for cap in bounding:
            check(lib.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap} from the bounding set")
    check(lib.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    header = ffi.new("uint32_t[2]", [_LINUX_CAPABILITY_VERSION_3, 0])
    mask = kept_mask() & _own("CapPrm")  # of the four, those it was given: capset cannot add any
    low, high = mask & 0xFFFF_FFFF, mask >> 32
    # Two struct __user_cap_data_struct {effective, permitted, inheritable}: capabilities 0-31, then 32-63.
    data = ffi.new("uint32_t[6]", [low, low, 0, high, high, 0])
    check(lib.capset(header, data), "setting capabilities")
    check(lib.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "setting no_new_privs")


def _own(field: str) -> int:
    """One of this process's capability sets ("CapEff", "CapPrm"), from its own /proc status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1], 16)
    raise OSError(f"no {field} in /proc/self/status")
