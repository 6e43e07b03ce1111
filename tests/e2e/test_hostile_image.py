"""An image that plants payloads wherever the host's interpreter, dynamic loader or libc might look.

The trace server never joins the container's namespaces (it marks the container's root mount through
/proc/PID/root), and the plugin only fstat()s and readlink()s the fds the kernel opened: no path of the
container's is ever opened, imported, loaded or executed by either. If anything were, a payload would
leave its marker, on the host or in the container."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from testbed.images import FileSpec, build_image
from testbed.tracing import start_traced

HOSTILE_IMAGE = "nri-optimizer.test/hostile:1"
MARKER = "/tmp/nri-optimizer-hostile-marker"
PY_PAYLOAD = f"open({MARKER!r}, 'a').write('python payload ran\\n')\n".encode()
C_PAYLOAD = f"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void payload(void) {{
    int fd = open("{MARKER}", O_CREAT | O_WRONLY | O_APPEND, 0644);
    if (fd >= 0) {{ write(fd, "shared object payload ran\\n", 26); close(fd); }}
}}
"""


def shared_object(tmp: Path) -> bytes:
    """A real payload library if a compiler is at hand; otherwise bytes no loader would accept."""
    if shutil.which("gcc") is None:
        return b"\x7fELF-not-really"
    (tmp / "payload.c").write_text(C_PAYLOAD)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp / "payload.so"), str(tmp / "payload.c")], check=True)
    return (tmp / "payload.so").read_bytes()


def hostile_files(tmp: Path) -> dict[str, bytes | FileSpec]:
    library = shared_object(tmp)
    files: dict[str, bytes | FileSpec] = {
        "/etc/ld.so.preload": b"/lib/payload.so\n",
        "/lib/payload.so": FileSpec(library, mode=0o755),
        "/etc/ld.so.cache": b"junk",
        "/usr/lib/locale/locale-archive": b"junk",
        "/usr/lib/locale/C.utf8/LC_CTYPE": b"junk",
        "/etc/localtime": b"junk",
        "/etc/nsswitch.conf": b"passwd: payload\n",
    }
    for lib in ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/lib/aarch64-linux-gnu"):
        for name in ("libc.so.6", "libffi.so.8", "libpthread.so.0", "libnss_payload.so.2"):
            files[f"{lib}/{name}"] = FileSpec(library, mode=0o755)
        files[f"{lib}/gconv/gconv-modules"] = b"module payload// INTERNAL payload 1\n"
        files[f"{lib}/gconv/payload.so"] = FileSpec(library, mode=0o755)
    # Every place this interpreter (and a distribution's) looks for modules and startup hooks.
    python_dirs = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    python_dirs |= {
        f"/usr/lib/{version}",
        f"/usr/local/lib/{version}",
        f"/usr/local/lib/{version}/site-packages",
        "/usr/lib/python3/dist-packages",
    }
    for directory in python_dirs:
        for module in (
            "sitecustomize.py",
            "usercustomize.py",
            "encodings/__init__.py",
            "asyncio/__init__.py",
            "cffi/__init__.py",
            "optimizer_server/__init__.py",
            "nri_optimizer/__init__.py",
        ):
            files[f"{directory}/{module}"] = PY_PAYLOAD
        files[f"{directory}/payload.pth"] = b"import sitecustomize\n"
    return files


def assert_payloads_would_be_seen(tmp_path: Path) -> None:
    """The detector works: each payload, run on the host, leaves the marker."""
    subprocess.run([sys.executable, "-c", PY_PAYLOAD.decode()], check=True)
    if (tmp_path / "payload.so").exists():
        subprocess.run(
            [sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(tmp_path / 'payload.so')!r})"], check=True
        )
    expected = "python payload ran\n" + ("shared object payload ran\n" if (tmp_path / "payload.so").exists() else "")
    assert Path(MARKER).read_text() == expected
    Path(MARKER).unlink()


def test_hostile_image_loads_nothing_and_is_listed_right(make_containerd, flavour: str, tmp_path: Path) -> None:
    Path(MARKER).unlink(missing_ok=True)
    image = build_image(HOSTILE_IMAGE, tmp_path / "hostile.tar", hostile_files(tmp_path))
    assert_payloads_would_be_seen(tmp_path)
    traced = start_traced(make_containerd, flavour, tmp_path / "bed", image)
    run = traced.run(
        [
            "/bin/sh",
            "-c",
            f"cat /etc/ld.so.preload /etc/nsswitch.conf >/dev/null; "
            f"if [ -e {MARKER} ]; then echo marker found; else echo no marker; fi",
        ],
        image=HOSTILE_IMAGE,
    )
    traced.finish(run, timeout=10)
    assert run.log_lines() == ["no marker"]  # no payload ran inside the container either
    assert not Path(MARKER).exists(), Path(MARKER).read_text()
    assert traced.result(HOSTILE_IMAGE) == ["/bin/busybox", "/etc/ld.so.preload", "/etc/nsswitch.conf"]
