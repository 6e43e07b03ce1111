"""A small typed CRI v1 client (the RuntimeService and ImageService calls this project needs).

Used by the e2e testbed and by `nri-optimizer profile`. Only this module imports grpc, so the daemon,
which never talks CRI, does not pay for it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from nri_optimizer.errors import CriError as CriError

NamespaceMode = Literal["pod", "container", "node"]
ContainerState = Literal["created", "running", "exited", "unknown"]
_NS_MODE = {"pod": pb.POD, "container": pb.CONTAINER, "node": pb.NODE}
_STATE: dict[int, ContainerState] = {
    pb.CONTAINER_CREATED: "created",
    pb.CONTAINER_RUNNING: "running",
    pb.CONTAINER_EXITED: "exited",
    pb.CONTAINER_UNKNOWN: "unknown",
}
_Response = TypeVar("_Response")


@dataclass(frozen=True)
class Pod:
    """A running pod sandbox and the config it was created with (CreateContainer needs both)."""

    id: str
    config: pb.PodSandboxConfig


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    readonly: bool = False


@dataclass(frozen=True)
class ContainerStatus:
    id: str
    name: str
    state: ContainerState
    exit_code: int
    reason: str
    log_path: str
    pid: int | None  # from the verbose info; None once the container has exited or if not reported


class CriClient:
    """Blocking CRI client over a unix socket. Every call is bounded by `timeout` seconds."""

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        target = address if address.startswith("unix:") else f"unix://{address}"
        self.address = address
        self.timeout = timeout
        # After a failed connect gRPC waits 1 s before retrying (then doubles, up to 120 s); a runtime
        # that is starting or restarting is back within milliseconds, so retry much sooner.
        self._channel = grpc.insecure_channel(
            target,
            options=[("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 1000)],
        )
        # The generated stubs are untyped; the typed wrappers below pin down what each call returns.
        self._runtime: Any = pb_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._images: Any = pb_grpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runtime ---------------------------------------------------------------------------------

    def version(self) -> pb.VersionResponse:
        return self._call(self._runtime, "Version", pb.VersionRequest(), pb.VersionResponse)

    def run_pod(
        self,
        name: str,
        *,
        uid: str | None = None,
        namespace: str = "default",
        cgroup_parent: str = "",
        log_directory: str = "",
        annotations: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
        host_network: bool = True,
        pid_namespace: NamespaceMode = "container",
    ) -> Pod:
        """Run a pod sandbox. Host networking needs no CNI; it also needs an empty hostname, since
        runc cannot set one without a private UTS namespace."""
        namespaces = pb.NamespaceOption(
            network=pb.NODE if host_network else pb.POD,
            pid=_NS_MODE[pid_namespace],
        )
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid or f"{name}-uid", namespace=namespace),
            log_directory=log_directory,
            labels=dict(labels or {}),
            annotations=dict(annotations or {}),
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=namespaces),
            ),
        )
        response = self._call(
            self._runtime, "RunPodSandbox", pb.RunPodSandboxRequest(config=config), pb.RunPodSandboxResponse
        )
        return Pod(response.pod_sandbox_id, config)

    def stop_pod(self, pod_id: str) -> None:
        self._call(
            self._runtime, "StopPodSandbox", pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), pb.StopPodSandboxResponse
        )

    def remove_pod(self, pod_id: str) -> None:
        request = pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id)
        self._call(self._runtime, "RemovePodSandbox", request, pb.RemovePodSandboxResponse)

    def list_pods(self) -> list[pb.PodSandbox]:
        return list(
            self._call(self._runtime, "ListPodSandbox", pb.ListPodSandboxRequest(), pb.ListPodSandboxResponse).items
        )

    def create_container(
        self,
        pod: Pod,
        name: str,
        image: str,
        *,
        command: Sequence[str] | None = None,
        args: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        mounts: Sequence[Mount] = (),
        working_dir: str = "",
        log_path: str | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        security_context: pb.LinuxContainerSecurityContext | None = None,
    ) -> str:
        """Create a container in `pod`. `log_path` is relative to the pod's log directory (CRI's rule);
        it defaults to `<name>.log` when the pod has a log directory. `security_context` (capabilities, read-only
        root, user, seccomp...) is the container's; its namespaces are always the pod's."""
        pod_ns = pod.config.linux.security_context.namespace_options
        security = pb.LinuxContainerSecurityContext()
        if security_context is not None:
            security.CopyFrom(security_context)
        # The container must repeat the pod's namespace choices, or CRI gives it its own.
        security.namespace_options.CopyFrom(pb.NamespaceOption(network=pod_ns.network, pid=pod_ns.pid))
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name),
            image=pb.ImageSpec(image=image),
            command=list(command or []),
            args=list(args or []),
            working_dir=working_dir,
            envs=[pb.KeyValue(key=k, value=v) for k, v in (env or {}).items()],
            mounts=[
                pb.Mount(host_path=m.host_path, container_path=m.container_path, readonly=m.readonly) for m in mounts
            ],
            log_path=log_path if log_path is not None else (f"{name}.log" if pod.config.log_directory else ""),
            labels=dict(labels or {}),
            annotations=dict(annotations or {}),
            linux=pb.LinuxContainerConfig(security_context=security),
        )
        request = pb.CreateContainerRequest(pod_sandbox_id=pod.id, config=config, sandbox_config=pod.config)
        return self._call(self._runtime, "CreateContainer", request, pb.CreateContainerResponse).container_id

    def start_container(self, container_id: str) -> None:
        request = pb.StartContainerRequest(container_id=container_id)
        self._call(self._runtime, "StartContainer", request, pb.StartContainerResponse)

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        """Stop with SIGTERM, then SIGKILL after `timeout` seconds (0: kill at once)."""
        request = pb.StopContainerRequest(container_id=container_id, timeout=timeout)
        self._call(self._runtime, "StopContainer", request, pb.StopContainerResponse, extra_time=timeout)

    def exec_sync(self, container_id: str, command: Sequence[str], timeout: int = 10) -> tuple[int, bytes, bytes]:
        """Run a command in a running container, as an exec probe or `kubectl exec` would:
        (exit code, stdout, stderr)."""
        request = pb.ExecSyncRequest(container_id=container_id, cmd=list(command), timeout=timeout)
        response = self._call(self._runtime, "ExecSync", request, pb.ExecSyncResponse, extra_time=timeout)
        return response.exit_code, response.stdout, response.stderr

    def remove_container(self, container_id: str) -> None:
        request = pb.RemoveContainerRequest(container_id=container_id)
        self._call(self._runtime, "RemoveContainer", request, pb.RemoveContainerResponse)

    def list_containers(self, pod_id: str | None = None) -> list[pb.Container]:
        request = pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pod_id or ""))
        return list(self._call(self._runtime, "ListContainers", request, pb.ListContainersResponse).containers)

    def container_status(self, container_id: str) -> ContainerStatus:
        request = pb.ContainerStatusRequest(container_id=container_id, verbose=True)
        response = self._call(self._runtime, "ContainerStatus", request, pb.ContainerStatusResponse)
        status = response.status
        pid: int | None = None
        if info := response.info.get("info"):
            # containerd reports the task pid in its verbose info; 0 means no running task.
            pid = json.loads(info).get("pid") or None
        return ContainerStatus(
            id=status.id,
            name=status.metadata.name,
            state=_STATE[status.state],
            exit_code=status.exit_code,
            reason=status.reason,
            log_path=status.log_path,
            pid=pid,
        )

    # --- images ----------------------------------------------------------------------------------

    def pull_image(self, image: str, *, timeout: float = 600.0) -> str:
        """Pull `image` (fetch and unpack) and return the image id the runtime gives it. A pull over a slow link
        takes long: the call may run `timeout` seconds beyond the client's own timeout."""
        request = pb.PullImageRequest(image=pb.ImageSpec(image=image))
        return self._call(self._images, "PullImage", request, pb.PullImageResponse, extra_time=timeout).image_ref

    def remove_image(self, image: str) -> None:
        """Remove `image` and every name of it; the runtime then deletes the content no other image uses."""
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=image))
        self._call(self._images, "RemoveImage", request, pb.RemoveImageResponse)

    def image_status(self, image: str) -> bool:
        """Whether the runtime has `image` (a reference as CRI would pull it)."""
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=image))
        return bool(self._call(self._images, "ImageStatus", request, pb.ImageStatusResponse).image.id)

    def _call(
        self, stub: Any, method: str, request: object, response_type: type[_Response], extra_time: float = 0
    ) -> _Response:
        try:
            response = getattr(stub, method)(request, timeout=self.timeout + extra_time)
        except grpc.RpcError as error:
            call: Any = error  # what grpc raises is also a grpc.Call, which carries the status
            raise CriError(method, call.code(), call.details() or "") from None
        if not isinstance(response, response_type):
            raise TypeError(f"CRI {method} returned {type(response).__name__}, not {response_type.__name__}")
        return response


def read_log(path: str | Path) -> list[str]:
    """The lines a container wrote, from a CRI log file (`<time> <stream> <P|F> <text>` per chunk).

    A line longer than the runtime's buffer arrives as partial (P) chunks ended by a full (F) one.
    """
    lines: list[str] = []
    partial = ""
    for record in Path(path).read_text(errors="replace").splitlines():
        _time, _stream, tag, text = [*record.split(" ", 3), ""][:4]
        if tag == "P":
            partial += text
        else:
            lines.append(partial + text)
            partial = ""
    return lines
