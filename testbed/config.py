"""containerd configuration for a private test instance: 2.x (`version = 3`) and 1.7 (`version = 2`).

Every path containerd would otherwise share with a system containerd (root, state, sockets, runc
state, CNI config, NRI socket) points into the instance's own directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

Table = Mapping[str, "str | bool | int"]


@dataclass(frozen=True)
class Layout:
    """Where one instance keeps its files."""

    base: Path

    @property
    def config(self) -> Path:
        return self.base / "config.toml"

    @property
    def address(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def log(self) -> Path:
        return self.base / "containerd.log"


@dataclass(frozen=True)
class Nri:
    enabled: bool
    socket: Path
    plugin_path: Path
    plugin_config_path: Path


@dataclass(frozen=True)
class _Cri:
    """CRI's settings, and the tables that hold them in each config version."""

    runtime: Table
    server: Table
    runc_options: Table
    cni: Table
    snapshotter: str
    sandbox_image: str
    registry_config_dir: Path | None

    RUNTIME_V3 = "plugins.'io.containerd.cri.v1.runtime'"
    IMAGES_V3 = "plugins.'io.containerd.cri.v1.images'"
    CRI_V2 = "plugins.'io.containerd.grpc.v1.cri'"

    def tables_v3(self) -> dict[str, Table]:
        runtime, images = self.RUNTIME_V3, self.IMAGES_V3
        tables: dict[str, Table] = {
            images: {"snapshotter": self.snapshotter},
            f"{images}.pinned_images": {"sandbox": self.sandbox_image},
            runtime: self.runtime,
            f"{runtime}.containerd": {"default_runtime_name": "runc"},
            f"{runtime}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
            f"{runtime}.containerd.runtimes.runc.options": self.runc_options,
            f"{runtime}.cni": self.cni,
            self.CRI_V2: self.server,
        }
        if self.registry_config_dir is not None:
            tables[f"{images}.registry"] = {"config_path": str(self.registry_config_dir)}
        return tables

    def tables_v2(self) -> dict[str, Table]:
        cri = self.CRI_V2
        tables: dict[str, Table] = {
            cri: {**self.server, **self.runtime, "sandbox_image": self.sandbox_image},
            f"{cri}.containerd": {"snapshotter": self.snapshotter, "default_runtime_name": "runc"},
            f"{cri}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
            f"{cri}.containerd.runtimes.runc.options": self.runc_options,
            f"{cri}.cni": self.cni,
        }
        if self.registry_config_dir is not None:
            tables[f"{cri}.registry"] = {"config_path": str(self.registry_config_dir)}
        return tables

    def remote_snapshotters(
        self, major: int, tables: Mapping[str, Table], snapshotters: Mapping[str, Path]
    ) -> dict[str, Table]:
        """A proxy plugin and a runtime handler per remote snapshotter, and the layer annotations they need."""
        if major >= 2:
            runtimes, images = f"{self.RUNTIME_V3}.containerd.runtimes", self.IMAGES_V3
            annotations: Table = {"use_local_image_pull": True}
        else:
            runtimes, images = f"{self.CRI_V2}.containerd.runtimes", f"{self.CRI_V2}.containerd"
            annotations = {}
        added: dict[str, Table] = {
            images: {
                **tables[images],
                "disable_snapshot_annotations": False,
                "discard_unpacked_layers": False,
                **annotations,
            },
        }
        for name, socket in snapshotters.items():
            added[f"{runtimes}.{_key(name)}"] = {"runtime_type": "io.containerd.runc.v2", "snapshotter": name}
            if major >= 2:  # 2.x unpacks a handler's pull into the snapshotter its runtime_platforms entry names
                added[f"{images}.runtime_platforms.{_key(name)}"] = {"snapshotter": name}
            added[f"{runtimes}.{_key(name)}.options"] = self.runc_options
            added[f"proxy_plugins.{_key(name)}"] = {"type": "snapshot", "address": str(socket)}
        return added


def render(
    major: int,
    layout: Layout,
    *,
    nri: Nri,
    sandbox_image: str,
    runc: Path,
    log_level: str = "info",
    registry_config_dir: Path | None = None,
    snapshotters: Mapping[str, Path] | None = None,
    snapshotter: str = "overlayfs",
    cni_bin_dir: Path | None = None,
) -> str:
    """The config file's text. `registry_config_dir` holds `<host>/hosts.toml` files (e.g. a plain-HTTP registry
    on loopback); containerd reads them at each pull, so they may be written after it starts.

    `snapshotters` (name -> gRPC socket) adds remote snapshotters: each is a proxy plugin and a runtime handler of
    the same name whose images are pulled and whose containers run on it (CRI `runtime_handler`; 2.x also needs
    the handler's `runtime_platforms` entry, or a pull for it unpacks onto the default snapshotter). Remote
    snapshotters need the layer annotations, which CRI passes only with `disable_snapshot_annotations = false`
    (and, in 2.x, only on its local pull path, not the transfer service's).

    `snapshotter` is the one CRI's images and containers use ("native": container roots are plain directories, which
    fanotify's fid mode can watch; containerd's overlays always have index=off, hence no file handles that decode).

    `cni_bin_dir` holds CNI plugins for pods with a network namespace of their own (see POD_NETWORK); without it
    only pods on the host's network can run.
    """
    base = layout.base
    top: Table = {
        "version": 3 if major >= 2 else 2,
        "root": str(base / "root"),
        "state": str(base / "state"),
        # Unpacking and image inspection mount snapshots under `temp`: keep those mounts in our dir too.
        "temp": str(base / "tmp"),
    }
    tables: dict[str, Table] = {
        "grpc": {"address": str(layout.address)},
        "ttrpc": {"address": f"{layout.address}.ttrpc"},
        "debug": {"level": log_level},
        "plugins.'io.containerd.internal.v1.opt'": {"path": str(base / "opt")},
        "plugins.'io.containerd.nri.v1.nri'": {
            "disable": not nri.enabled,
            "disable_connections": False,
            "socket_path": str(nri.socket),
            "plugin_path": str(nri.plugin_path),
            "plugin_config_path": str(nri.plugin_config_path),
            "plugin_registration_timeout": "5s",
            "plugin_request_timeout": "2s",
        },
    }
    cri = _Cri(
        runtime={
            # Root here lacks CAP_SYS_RESOURCE: without this runc fails with "can't get final child's PID".
            "restrict_oom_score_adj": True,
            "disable_apparmor": True,
            "enable_cdi": False,
        },
        server={"disable_tcp_service": True, "stream_server_address": "127.0.0.1", "stream_server_port": "0"},
        runc_options={"BinaryName": str(runc), "Root": str(base / "runc"), "SystemdCgroup": False},
        # CRI creates its CNI config dir if missing: point it at ours so /etc/cni is never touched.
        cni={"conf_dir": str(base / "cni"), **({"bin_dir": str(cni_bin_dir)} if cni_bin_dir else {})},
        snapshotter=snapshotter,
        sandbox_image=sandbox_image,
        registry_config_dir=registry_config_dir,
    )
    tables |= cri.tables_v3() if major >= 2 else cri.tables_v2()
    if snapshotters:
        tables |= cri.remote_snapshotters(major, tables, snapshotters)
    lines = [f"{key} = {_value(value)}" for key, value in top.items()]
    for name, table in tables.items():
        lines += ["", f"[{name}]", *(f"  {key} = {_value(value)}" for key, value in table.items())]
    return "\n".join(lines) + "\n"


# Pods that are not on the host's network get a network namespace holding lo and one tap device with a fixed
# address from TEST-NET-1 (RFC 5737): CRI wants an interface with an address, and a tap device lives wholly inside
# the pod's namespace (a veth or bridge would add links and routes to the host; this kernel has no dummy links).
# Nothing is routed to it: the test bed's pods talk to nothing.
POD_NETWORK = {
    "cniVersion": "1.0.0",
    "name": "nri-optimizer-testbed",
    "plugins": [
        {"type": "loopback"},
        {"type": "tap", "ipam": {"type": "static", "addresses": [{"address": "192.0.2.10/24"}]}},
    ],
}
CNI_PLUGINS = ("loopback", "tap", "static")  # what POD_NETWORK runs


def _key(name: str) -> str:
    """A TOML key: bare when it can be (letters, digits, - and _), else quoted."""
    return name if name.replace("-", "").replace("_", "").isalnum() and name.isascii() else json.dumps(name)


def _value(value: str | bool | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    # A JSON string is a valid TOML basic string for the ASCII paths and names used here.
    return json.dumps(value)
