"""CRI calls on a runtime handler: the pull, the pod and its containers of a nydus variant go to that variant's
snapshotter.

containerd picks the snapshotter of a runtime handler (its `snapshotter` setting) for RunPodSandbox's
``runtime_handler`` (the pod's containers follow their pod), and for PullImage from ``ImageSpec.runtime_handler``
(containerd 2.x, CRI v0.29+) or else from the sandbox config's ``io.containerd.cri.runtime-handler`` annotation
(1.7 knows only this one). We send both, so a pull lands in the same snapshotter on either version.
"""

from __future__ import annotations

from cri_api.v1 import api_pb2 as pb

from nri_optimizer.cri.client import CriClient, Pod

RUNTIME_HANDLER_ANNOTATION = "io.containerd.cri.runtime-handler"


class HandlerCri(CriClient):
    """CriClient whose pods and pulls may name a runtime handler ("" is the default one)."""

    def run_pod_on(self, handler: str, name: str, *, cgroup_parent: str, log_directory: str) -> Pod:
        if not handler:
            return self.run_pod(name, cgroup_parent=cgroup_parent, log_directory=log_directory)
        namespaces = pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER)
        config = pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=f"{name}-uid", namespace="default"),
            log_directory=log_directory,
            annotations={RUNTIME_HANDLER_ANNOTATION: handler},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(namespace_options=namespaces),
            ),
        )
        request = pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
        response = self._call(self._runtime, "RunPodSandbox", request, pb.RunPodSandboxResponse)
        return Pod(response.pod_sandbox_id, config)

    def pull_image_on(self, handler: str, image: str, *, timeout: float = 600.0) -> str:
        if not handler:
            return self.pull_image(image, timeout=timeout)
        request = pb.PullImageRequest(
            image=pb.ImageSpec(image=image, runtime_handler=handler),
            sandbox_config=pb.PodSandboxConfig(annotations={RUNTIME_HANDLER_ANNOTATION: handler}),
        )
        return self._call(self._images, "PullImage", request, pb.PullImageResponse, extra_time=timeout).image_ref
