"""NRI's shared vocabulary, apart from the stub: service names, events and their mask, the default socket,
and a plugin's identity. Configuration and commands use these without needing the runtime (as containerd/nri's
pkg/api does for its stub and adaptation)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from nri_optimizer.nri.proto import nri_pb2 as pb

PLUGIN_SERVICE = "nri.pkg.api.v1alpha1.Plugin"
RUNTIME_SERVICE = "nri.pkg.api.v1alpha1.Runtime"

DEFAULT_SOCKET = "/var/run/nri/nri.sock"

# The events the stub delivers, and the handler method for each. Mask bit = event - 1.
EVENT_HANDLERS: dict[int, str] = {
    pb.START_CONTAINER: "start_container",
    pb.POST_START_CONTAINER: "post_start_container",
    pb.STOP_CONTAINER: "stop_container",
    pb.REMOVE_CONTAINER: "remove_container",
}

# Events as users name them in config files and flags (upstream's spelling), e.g. "StartContainer". From NRI
# v0.12 each is also the name of its own RPC (before, all but StopContainer arrive as StateChange); all their
# requests share one wire shape, {pod = 1; container = 2}, and their responses are empty to an observer.
EVENT_NAMES: dict[str, int] = {
    "".join(word.capitalize() for word in name.split("_")): event for event, name in EVENT_HANDLERS.items()
}


@dataclass(frozen=True)
class Identity:
    name: str
    idx: str

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9]{2}", self.idx):
            raise ValueError(f"plugin index {self.idx!r} must be exactly two digits, e.g. 02")
        if not self.name or "/" in self.name:
            raise ValueError(f"plugin name {self.name!r} must be non-empty and contain no '/'")


def identity_from_executable(path: str) -> Identity | None:
    """containerd names pre-launched plugins ``NN-name`` after their file in plugin_path."""
    match = re.fullmatch(r"([0-9]{2})-(.+)", os.path.basename(path))
    return Identity(match.group(2), match.group(1)) if match else None


def event_mask(plugin: object, events: Sequence[str] | None = None) -> int:
    """The subscription: the named events, or else every event the plugin has a handler for.

    Naming an event the plugin cannot handle is an error: containerd would call us for nothing.
    """
    handled = {event for event, method in EVENT_HANDLERS.items() if callable(getattr(plugin, method, None))}
    if events is None:
        chosen = handled
    else:
        chosen = set()
        for name in events:
            event = EVENT_NAMES.get(name)
            if event is None or event not in handled:
                known = ", ".join(name for name, event in EVENT_NAMES.items() if event in handled)
                raise ValueError(f"event {name!r} is not one this plugin handles; choose from {known}")
            chosen.add(event)
    return sum(1 << (event - 1) for event in chosen)
