"""Which containers are traced, on the real containerd: pod annotations (pod-wide and per container), mode = opt-in,
namespace and image patterns. A container left out starts as usual and the log says why; one traced has its exact list."""

from __future__ import annotations

from pathlib import Path

import pytest

from nri_optimizer.cri.client import Pod
from testbed.images import BUSYBOX_IMAGE
from testbed.tracing import WORKLOAD_IMAGE, Traced, build_workload_image, start_traced

POD_KEY = "trace.nri-optimizer.io/pod"


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def start_pod(
    traced: Traced, name: str, *, namespace: str = "default", annotations: dict[str, str] | None = None
) -> Pod:
    ctd = traced.bed.ctd
    log_dir = ctd.logs_dir / name
    log_dir.mkdir(parents=True)
    return traced.bed.cri.run_pod(
        name, namespace=namespace, cgroup_parent=ctd.cgroup_parent, log_directory=str(log_dir), annotations=annotations
    )


def start_container(traced: Traced, pod: Pod, name: str, command: list[str], image: str = WORKLOAD_IMAGE) -> str:
    cid = traced.bed.cri.create_container(pod, name, image, command=command)
    traced.bed.cri.start_container(cid)
    return cid


def finished(traced: Traced, cid: str) -> str:
    """Wait for the container to exit, stop it, and return the plugin's last word on it."""
    traced.bed.wait_exited(cid)
    traced.bed.cri.stop_container(cid)
    (line,) = traced.log.wait_for(rf"{cid} (recorded|not traced|trace lost)")
    return line


def not_traced(traced: Traced, cid: str, why: str) -> None:
    line = finished(traced, cid)
    assert line.endswith(f"{cid} not traced: {why}"), line
    assert not traced.log.matching(rf"{cid} tracing pid")


def test_a_pod_annotated_false_is_not_traced_and_others_are(make_containerd, flavour, tmp_path, workload_image) -> None:
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image, extra="overwrite = true\n")
    out = start_pod(traced, "opted-out", annotations={POD_KEY: "false"})
    cid = start_container(traced, out, "app", ["/bin/cat", "/data/f001"])
    not_traced(traced, cid, f"annotation {POD_KEY} = 'false'")
    assert not traced.result_path().exists()
    plain = start_pod(traced, "plain")
    cid = start_container(traced, plain, "app", ["/bin/cat", "/data/f002"])
    assert "recorded 2 files" in finished(traced, cid)
    assert traced.result() == ["/bin/busybox", "/data/f002"]


def test_opt_in_traces_only_the_annotated_container_of_a_pod(
    make_containerd, flavour, tmp_path, workload_image
) -> None:
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image, extra='mode = "opt-in"\n')
    unannotated = start_pod(traced, "unannotated")
    cid = start_container(traced, unannotated, "app", ["/bin/cat", "/data/f001"])
    not_traced(
        traced,
        cid,
        f'mode = "opt-in" and the pod has neither trace.nri-optimizer.io/container.app nor {POD_KEY} = "true"',
    )
    pod = start_pod(traced, "two-containers", annotations={"trace.nri-optimizer.io/container.web": "true"})
    sidecar = start_container(traced, pod, "sidecar", ["/bin/cat", "/data/f003"], image=BUSYBOX_IMAGE)
    web = start_container(traced, pod, "web", ["/bin/cat", "/data/f004", "/data/f005"])
    not_traced(
        traced,
        sidecar,
        f'mode = "opt-in" and the pod has neither trace.nri-optimizer.io/container.sidecar nor {POD_KEY} = "true"',
    )
    assert "recorded 3 files" in finished(traced, web)
    assert traced.result() == ["/bin/busybox", "/data/f004", "/data/f005"]


def test_a_container_annotation_overrides_its_pods(make_containerd, flavour, tmp_path, workload_image) -> None:
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image)
    pod = start_pod(traced, "mixed", annotations={POD_KEY: "false", "trace.nri-optimizer.io/container.web": "true"})
    other = start_container(traced, pod, "other", ["/bin/cat", "/data/f001"], image=BUSYBOX_IMAGE)
    web = start_container(traced, pod, "web", ["/bin/cat", "/data/f006"])
    not_traced(traced, other, f"annotation {POD_KEY} = 'false'")
    assert "recorded 2 files" in finished(traced, web)
    assert traced.result() == ["/bin/busybox", "/data/f006"]


def test_namespace_and_image_patterns(make_containerd, flavour, tmp_path, workload_image) -> None:
    extra = (
        'namespace_exclude = ["kube-*"]\nimage_include = ["nri-optimizer.test/work*"]\n'
        # An annotation cannot lift the operator's limits.
        'mode = "opt-in"\n'
    )
    traced = start_traced(make_containerd, flavour, tmp_path, workload_image, extra=extra)
    system = start_pod(traced, "system", namespace="kube-system", annotations={POD_KEY: "true"})
    cid = start_container(traced, system, "app", ["/bin/cat", "/data/f001"])
    not_traced(traced, cid, "namespace kube-system matches namespace_exclude")
    other_image = start_pod(traced, "busybox", annotations={POD_KEY: "true"})
    cid = start_container(traced, other_image, "app", ["/bin/true"], image=BUSYBOX_IMAGE)
    not_traced(traced, cid, f"image {BUSYBOX_IMAGE} matches no image_include pattern")  # a registry name: as is
    app = start_pod(traced, "app", namespace="team-a", annotations={POD_KEY: "true"})
    cid = start_container(traced, app, "app", ["/bin/cat", "/data/f007"])
    assert "recorded 2 files" in finished(traced, cid)
    assert traced.result() == ["/bin/busybox", "/data/f007"]
    assert not traced.log.matching("Traceback")
