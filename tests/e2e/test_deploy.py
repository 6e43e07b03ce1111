"""The DaemonSet for real: deploy/nri-optimizer.yaml is valid Kubernetes (kubeconform, two API versions), and its pod,
read from that very file, runs the image of deploy/Dockerfile (built here without a Docker engine) through CRI on
containerd 2.1 and 1.7, as kubelet would run it: the same capabilities and nothing more, not privileged, host pid
namespace, read-only root, RuntimeDefault seccomp, no new privileges, the NRI socket, results and containerd-root
host paths, the ConfigMap as its config. External mode; then another pod's list must be exact."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from cri_api.v1 import api_pb2 as pb

from nri_optimizer.cri.client import Mount, read_log
from testbed import kubeconform
from testbed.tracing import WORKLOAD_IMAGE, build_workload_image
from tests.e2e import dockerfile

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "nri-optimizer.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# The capabilities the manifest adds, as /proc/PID/status's CapEff shows them (linux/capability.h bit numbers):
# CAP_DAC_READ_SEARCH 2, CAP_NET_ADMIN 12, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21.
CAP_BITS = {"DAC_READ_SEARCH": 2, "NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_ADMIN": 21}


def manifest_objects() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def test_the_manifest_is_valid_kubernetes() -> None:
    valid = kubeconform.validate([MANIFEST])
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "4 resources found in 1 file - Valid: 4, Invalid: 0, Errors: 0, Skipped: 0" in valid.stdout


def test_the_validation_catches_a_misspelt_field(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(MANIFEST.read_text().replace("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"))
    invalid = kubeconform.validate([wrong])
    assert invalid.returncode == 1
    assert "additional properties 'readOnlyRootFileSystem' not allowed" in invalid.stdout


@pytest.fixture(scope="session")
def plugin_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(name, OCI tarball) of deploy/Dockerfile, built from a context holding what make optimizer makes."""
    context = tmp_path_factory.mktemp("context")
    # make optimizer's wheelhouse: the project with its [metrics] extra, and every dependency, as wheels.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(context / "build" / "wheelhouse"),
            f"{ROOT}[metrics]",
        ],
        check=True,
        timeout=600,
    )
    (container,) = manifest_objects()["DaemonSet"]["spec"]["template"]["spec"]["containers"]
    name = container["image"]
    full = name if "/" in name else f"docker.io/library/{name}"
    return full, dockerfile.build(DOCKERFILE, context, full, context / "image.tar")


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def security_context(spec: dict[str, Any]) -> pb.LinuxContainerSecurityContext:
    """The container's securityContext as kubelet hands it to the runtime."""
    seccomp = {"RuntimeDefault": pb.SecurityProfile.RuntimeDefault, "Unconfined": pb.SecurityProfile.Unconfined}
    return pb.LinuxContainerSecurityContext(
        capabilities=pb.Capability(
            add_capabilities=spec["capabilities"]["add"], drop_capabilities=spec["capabilities"]["drop"]
        ),
        privileged=spec["privileged"],
        run_as_user=pb.Int64Value(value=spec["runAsUser"]),
        readonly_rootfs=spec["readOnlyRootFilesystem"],
        no_new_privs=not spec["allowPrivilegeEscalation"],
        seccomp=pb.SecurityProfile(profile_type=seccomp[spec["seccompProfile"]["type"]]),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def status_fields(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)


def wait_for_line(log: Path, pattern: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        lines = read_log(log) if log.exists() else []
        if found := [line for line in lines if re.search(pattern, line)]:
            return found[-1]
        assert time.monotonic() < deadline, f"no {pattern!r} in the DaemonSet pod's log:\n" + "\n".join(lines[-20:])
        time.sleep(0.1)


def test_the_daemonset_pod_traces_another_pod(make_containerd, flavour, tmp_path, plugin_image, workload_image) -> None:
    objects = manifest_objects()
    pod_spec = objects["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert pod_spec["hostPID"] is True and not pod_spec.get("hostNetwork")
    bed = make_containerd(flavour)
    image_name, tarball = plugin_image
    bed.ctd.import_image(tarball, timeout=120)
    bed.ctd.import_image(workload_image)

    # The node's paths, as this test bed has them. containerd's root must be seen at the same path inside as on the
    # host (the plugin finds a container's upper layer by the host path in /proc/PID/mountinfo), as the manifest has
    # /var/lib/containerd at /var/lib/containerd.
    results = tmp_path / "results"
    results.mkdir()
    ctd_root = bed.ctd.dir / "root"
    node_paths = {
        "/var/run/nri": str(bed.ctd.nri_socket.parent),
        "/opt/nri/optimizer/results": str(results),
        "/var/lib/containerd": str(ctd_root),
    }
    assert bed.ctd.nri_socket.name == "nri.sock"  # the name the manifest's --socket gives
    # The ConfigMap, projected as kubelet does: its keys as files. This test bed's pods share the host's network (no
    # CNI), so the metrics address the pod would bind in its own network namespace becomes a loopback port here.
    port = free_port()
    conf_dir = tmp_path / "configmap"
    conf_dir.mkdir()
    for key, text in objects["ConfigMap"]["data"].items():
        assert 'metrics_address = "0.0.0.0:9464"' in text
        (conf_dir / key).write_text(text.replace('"0.0.0.0:9464"', f'"127.0.0.1:{port}"'))
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = []
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            manifest_host = volume["hostPath"]["path"]
            host = node_paths[manifest_host]
            inside = host if manifest_host == "/var/lib/containerd" else mount["mountPath"]
        else:
            host, inside = str(conf_dir), mount["mountPath"]
        mounts.append(Mount(host, inside, readonly=mount.get("readOnly", False)))

    log_dir = bed.ctd.logs_dir / "daemonset"
    log_dir.mkdir()
    pod = bed.cri.run_pod(
        "nri-optimizer-node1",
        namespace=objects["DaemonSet"]["metadata"]["namespace"],
        cgroup_parent=bed.ctd.cgroup_parent,
        log_directory=str(log_dir),
        pid_namespace="node" if pod_spec["hostPID"] else "container",
        annotations=objects["DaemonSet"]["spec"]["template"]["metadata"]["annotations"],
    )
    cid = bed.cri.create_container(
        pod,
        container["name"],
        image_name,
        args=container["args"],
        mounts=mounts,
        security_context=security_context(container["securityContext"]),
    )
    bed.cri.start_container(cid)
    plugin_log = log_dir / f"{container['name']}.log"
    wait_for_line(plugin_log, r"registered as 02-optimizer-nri-plugin")

    # It runs as the manifest says, and no more.
    pid = bed.cri.container_status(cid).pid
    assert wait_for_line(plugin_log, r"starting 02-optimizer-nri-plugin").endswith(f"(external mode, pid {pid})")
    status = status_fields(pid)
    wanted = sum(1 << CAP_BITS[name] for name in container["securityContext"]["capabilities"]["add"])
    assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == wanted
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"  # a filter: the runtime's default profile
    assert status["Uid"].split()[0] == "0"
    root_mount = next(
        line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if line.split()[4] == "/"
    )
    assert "ro" in root_mount.split()[5].split(",")
    assert Path(f"/proc/{pid}/ns/pid").readlink() == Path("/proc/self/ns/pid").readlink()  # hostPID

    # Another pod, traced by it: the exact list, in the node's results directory.
    run = bed.run_busybox(["/bin/cat", "/data/f010", "/data/f003", "/data/f007"], image=WORKLOAD_IMAGE)
    bed.cri.stop_container(run.container_id)
    line = wait_for_line(plugin_log, rf"{run.container_id} recorded")
    assert "recorded 4 files (stopped;" in line
    assert (results / "workload:1").read_text().splitlines() == [
        "/bin/busybox",
        "/data/f010",
        "/data/f003",
        "/data/f007",
    ]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        scraped = answer.read().decode()
    assert "nri_optimizer_traces_completed_total 1.0" in scraped.splitlines()
    (tmp_path / "daemonset-pod.log").write_text("\n".join(read_log(plugin_log)) + "\n")
    bed.cri.stop_container(cid, 5)
