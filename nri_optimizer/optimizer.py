"""What the plugin does on each container event.

For now it logs StartContainer and StopContainer and answers at once; tracing sessions come next.
"""

from __future__ import annotations

import logging

from . import config as cfg
from . import logs
from .proto import nri_pb2 as api
from .stub import ConfigError

log = logging.getLogger(__name__)

IMAGE_NAME_ANNOTATION = "io.kubernetes.cri.image-name"


def image_name(container: api.Container) -> str:
    """Container.image (NRI >= v0.12.2), else the CRI annotation every released containerd sets."""
    return container.image.name or container.annotations.get(IMAGE_NAME_ANNOTATION, "")


def describe(pod: api.PodSandbox, container: api.Container) -> str:
    return (
        f"name={container.name} pid={container.pid} image={image_name(container) or '-'} pod={pod.namespace}/{pod.name}"
    )


class Optimizer:
    """The NRI plugin object: its handler methods are found by the stub."""

    def __init__(self, config: cfg.Config, *, prelaunched: bool) -> None:
        self.config = config
        self._prelaunched = prelaunched
        self.configured = False

    @property
    def events(self) -> tuple[str, ...]:
        return self.config.events

    async def configure(self, text: str, runtime: str, version: str) -> None:
        # A pre-launched plugin has no file or flags: its whole configuration is the drop-in file's text,
        # which containerd hands over here. An external plugin gets "" and keeps what it read at start.
        if not self._prelaunched:
            return
        try:
            config = cfg.build(cfg.parse_toml(text, "Configure"), {})
            cfg.validate_paths(config, "Configure")
        except cfg.ConfigError as exc:
            self._setup_prelaunched_logging(cfg.build({"log_file": cfg.salvage_log_file(text)}, {}))
            raise ConfigError(str(exc)) from exc
        self._setup_prelaunched_logging(config)
        self.config = config
        self.configured = True

    def _setup_prelaunched_logging(self, config: cfg.Config) -> None:
        logs.setup(cfg.log_level(config), config.log_file or logs.PRELAUNCHED_LOG_FILE, stderr=False)

    async def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        log.info("%s StartContainer %s", container.id, describe(pod, container))

    async def stop_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        log.info("%s StopContainer %s", container.id, describe(pod, container))
