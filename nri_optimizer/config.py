"""Configuration: upstream's TOML keys and flags, with the same defaults, checked strictly.

Sources, later ones winning: built-in defaults, the TOML text (a file in external mode, the text of the
Configure request in pre-launched mode), then command-line flags. Every error is one line that names the
source, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nri_optimizer import selection
from nri_optimizer.errors import ConfigError as ConfigError
from nri_optimizer.nri.api import DEFAULT_SOCKET, EVENT_NAMES

DEFAULT_CONFIG_FILE = "/etc/nri/conf.d/02-optimizer-nri-plugin.conf"
LOG_LEVELS = ("debug", "info", "warning", "error")
EVENT_MODES = ("auto", "fid", "fd")  # what the trace client takes (nri_optimizer.trace.client.EVENT_MODES)
ON_REPEAT = ("keep", "replace", "merge")  # results.runs.OnRepeat
# Each run merged is kept on disk (a list and its CSV): the window bounds that.
MAX_MERGE_WINDOW = 100
WORKLOAD_BY_CONTAINER_NAME = "container-name"
WORKLOAD_LABEL_PREFIX = "label:"
# Tries of one list's publish: the first and the retries after it (nri_optimizer/publish.py paces them).
MAX_PUBLISH_ATTEMPTS = 10
# A registry as an image reference names it: a host name or [IPv6 address], and a port.
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY_HOST = re.compile(rf"(?:{_HOST_LABEL}(?:\.{_HOST_LABEL})*|\[[0-9A-Fa-f:]+\])(?::[0-9]{{1,5}})?")
# A Kubernetes label key: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
_LABEL_KEY = re.compile(
    r"(?:(?=[^/]{1,253}/)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
)


@dataclass(frozen=True)
class Config:
    # Upstream's keys and defaults (nydus-snapshotter's optimizer-nri-plugin).
    persist_dir: str = "/opt/nri/optimizer/results"
    readable: bool = False
    server_path: str = "/usr/local/bin/optimizer-server"
    timeout: int = 0  # seconds; 0: trace until the container stops
    overwrite: bool = False
    events: tuple[str, ...] = ("StartContainer", "StopContainer")
    # Ours.
    include_exec: bool = False  # list files read by processes exec'd into the container (probes, kubectl exec)
    unlimited_queue: bool = True  # false: the kernel's queue limit; a burst beyond it makes an incomplete list
    event_mode: str = "auto"  # how the trace server receives events: "auto", "fid" or "fd" (README.md)
    socket: str = DEFAULT_SOCKET
    log_level: str = "info"
    log_file: str = ""  # "" logs to stderr only
    # Which containers are traced (nri_optimizer/selection.py has the rules).
    mode: str = "all"
    namespace_include: tuple[str, ...] = ()
    namespace_exclude: tuple[str, ...] = ()
    image_include: tuple[str, ...] = ()
    image_exclude: tuple[str, ...] = ()
    metrics_address: str = ""  # "": no metrics endpoint
    # Seconds the trace server may leave a request unanswered (saying nothing at all) before it is declared
    # stalled: killed, its traces lost, a fresh one started.
    stall_timeout: int = 10
    # What a run of an image that has a result already does (nri_optimizer/results/runs.py). overwrite is
    # upstream's spelling of "keep" (false) and "replace" (true); build() resolves the two.
    on_repeat: str = "keep"
    merge_window: int = 5  # on_repeat = "merge": the list is the merge of this many latest complete runs
    workload_key: str = ""  # "": one result per image; "container-name" or "label:<pod label>": one per workload
    # Lists of images matching these patterns are pushed to the image's registry after each trace (push-list, in
    # the background: nri_optimizer/publish.py); () publishes nothing.
    publish: tuple[str, ...] = ()
    publish_insecure: tuple[str, ...] = ()  # registries (host:port) reached over plain HTTP or unverified TLS
    publish_attempts: int = 4  # tries of one list's publish before it is given up (the local list stays)


# What each key takes, said the way the fix is said: "<key>: expected <this>".
_EXPECT: dict[str, str] = {
    "persist_dir": 'an absolute directory path, e.g. persist_dir = "/opt/nri/optimizer/results"',
    "readable": "true or false, e.g. readable = false",
    "server_path": 'an absolute path to the server executable, e.g. server_path = "/usr/local/bin/optimizer-server"',
    "timeout": "a whole number of seconds >= 0 (0 traces until the container stops), e.g. timeout = 0",
    "overwrite": "true or false, e.g. overwrite = false",
    "events": 'a list of event names, e.g. events = ["StartContainer", "StopContainer"]',
    "include_exec": "true or false, e.g. include_exec = false",
    "unlimited_queue": "true or false, e.g. unlimited_queue = true",
    "event_mode": '"auto" (fid where the kernel and file system allow it, else fd), "fid" or "fd", '
    'e.g. event_mode = "auto"',
    "socket": f'an absolute socket path, e.g. socket = "{DEFAULT_SOCKET}"',
    "log_level": f'one of {", ".join(LOG_LEVELS)}, e.g. log_level = "info"',
    "log_file": 'an absolute file path, or "" for stderr only, e.g. log_file = "/var/log/nri-optimizer.log"',
    "mode": 'one of "all" (trace every container) or "opt-in" (only pods annotated '
    f'{selection.POD_ANNOTATION} = "true"), e.g. mode = "all"',
    "namespace_include": 'a list of namespace patterns, e.g. namespace_include = ["team-*"]',
    "namespace_exclude": 'a list of namespace patterns, e.g. namespace_exclude = ["kube-system"]',
    "image_include": 'a list of image name patterns, e.g. image_include = ["registry.example/apps/*"]',
    "image_exclude": 'a list of image name patterns, e.g. image_exclude = ["registry.k8s.io/pause:*"]',
    "metrics_address": 'an absolute unix socket path or an IP address and port, or "" for none, '
    'e.g. metrics_address = "127.0.0.1:9464"',
    "stall_timeout": "a whole number of seconds >= 1, e.g. stall_timeout = 10",
    "on_repeat": 'one of "keep" (the first complete run stays), "replace" (each run replaces it) or "merge" '
    '(the list merges the latest merge_window runs), e.g. on_repeat = "keep"',
    "merge_window": f"a whole number of runs from 1 to {MAX_MERGE_WINDOW}, e.g. merge_window = 5",
    "workload_key": '"" (one list per image), "container-name", or "label:" and a pod label\'s key, '
    'e.g. workload_key = "label:app.kubernetes.io/name"',
    "publish": 'a list of image name patterns whose lists are pushed to the image\'s registry ([] for none, ["*"] '
    'for every image), e.g. publish = ["registry.example/apps/*"]',
    "publish_insecure": "a list of registries (host or host:port) reached over plain HTTP or TLS that is not "
    'verified, e.g. publish_insecure = ["registry.local:5000"]',
    "publish_attempts": f"a whole number of tries from 1 to {MAX_PUBLISH_ATTEMPTS}, e.g. publish_attempts = 4",
}
KEYS = tuple(f.name for f in dataclasses.fields(Config))
assert set(KEYS) == set(_EXPECT)


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _check(key: str, value: object) -> Any:
    """The value for ``key`` in its Config type, or ValueError with what was wrong (the caller adds the fix)."""
    got = f"got {value!r} ({_type_name(value)})"
    if key == "event_mode":
        if value not in EVENT_MODES:
            raise ValueError(got)
        return value
    if key in ("readable", "overwrite", "include_exec", "unlimited_queue"):
        if not isinstance(value, bool):
            raise ValueError(got)
        return value
    if key == "merge_window":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_MERGE_WINDOW:
            raise ValueError(got)
        return value
    if key in ("timeout", "stall_timeout"):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "stall_timeout" else 0):
            raise ValueError(got)
        return value
    if key == "publish_attempts":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PUBLISH_ATTEMPTS:
            raise ValueError(got)
        return value
    if key == "publish_insecure":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(got)
        for host in value:
            if not _REGISTRY_HOST.fullmatch(host):
                raise ValueError(f"{host!r} is not a registry's host or host:port")
        return tuple(value)
    if key.endswith(("_include", "_exclude")) or key == "publish":
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError(got)
        for pattern in value:
            if problem := selection.pattern_problem(pattern):
                raise ValueError(problem)
        return tuple(value)
    if key == "events":
        if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) for v in value):
            raise ValueError(got)
        unknown = [v for v in value if v not in EVENT_NAMES]
        if unknown:
            raise ValueError(f"unknown event {unknown[0]!r}")
        return tuple(value)
    if not isinstance(value, str):
        raise ValueError(got)
    if key == "log_level":
        if value.lower() not in LOG_LEVELS:
            raise ValueError(got)
        return value.lower()
    if key == "log_file" and value == "":
        return value
    if key == "on_repeat":
        if value not in ON_REPEAT:
            raise ValueError(got)
        return value
    if key == "workload_key":
        if value not in ("", WORKLOAD_BY_CONTAINER_NAME) and not (
            value.startswith(WORKLOAD_LABEL_PREFIX) and _LABEL_KEY.fullmatch(value[len(WORKLOAD_LABEL_PREFIX) :])
        ):
            raise ValueError(got)
        return value
    if key == "mode":
        if value not in selection.MODES:
            raise ValueError(got)
        return value
    if key == "metrics_address":
        if problem := metrics_address_problem(value):
            raise ValueError(f"{got}: {problem}")
        return value
    if not os.path.isabs(value):
        raise ValueError(f"{got}, which is not an absolute path")
    return value


def metrics_address_problem(address: str) -> str | None:
    """Why ``address`` cannot be listened on, or None: "" (off), an absolute unix socket path, or IP:PORT
    (``127.0.0.1:9464``, ``[::1]:9464``; a host name would need a lookup at every start)."""
    if address == "" or os.path.isabs(address):
        return None
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return "not an absolute path and no :PORT between 1 and 65535"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return f"{host!r} is not an IP address"
    return None


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Checked settings from TOML text; ``source`` names it in errors (a file path or "Configure")."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}; fix the syntax at that line") from exc
    settings: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _EXPECT:
            raise ConfigError(f"{source}: {key}: unknown key; remove it, or use one of: {', '.join(KEYS)}")
        settings[key] = _checked(f"{source}: {key}", key, value)
    _check_repeat_keys(settings, f"{source}: overwrite")
    return settings


def _check_repeat_keys(settings: dict[str, Any], where: str) -> None:
    """overwrite and on_repeat given together (in one source) must agree: overwrite = false is "keep"."""
    if "overwrite" not in settings or "on_repeat" not in settings:
        return
    if settings["overwrite"] == (settings["on_repeat"] == "keep"):
        raise ConfigError(
            f"{where}: {str(settings['overwrite']).lower()} disagrees with on_repeat = "
            f'"{settings["on_repeat"]}"; remove overwrite (on_repeat replaces it)'
        )


def salvage_log_file(text: str) -> str:
    """The log_file of a config that failed to check, if that key alone is usable: so that the error
    itself reaches the log the user is looking at."""
    try:
        value = tomllib.loads(text).get("log_file", "")
        return str(_check("log_file", value))
    except (tomllib.TOMLDecodeError, ValueError):
        return ""


def _checked(where: str, key: str, value: object) -> Any:
    """``where`` is "<source>: <key>" for a file, or the flag itself."""
    try:
        return _check(key, value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}; expected {_EXPECT[key]}") from None


def read_file(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"{path}: cannot read the config file: {reason}; fix its permissions or point --config elsewhere"
        ) from exc
    return parse_toml(text, path)


def build(file_settings: dict[str, Any], flag_settings: dict[str, Any]) -> Config:
    """Defaults, overridden by the file, overridden by flags (already checked with ``check_flag``).

    A source that gives overwrite and not on_repeat means "keep" (false) or "replace" (true); afterwards overwrite
    says whether a run may rewrite an existing result (on_repeat is not "keep")."""
    settings: dict[str, Any] = {}
    for source in (file_settings, flag_settings):
        settings.update(source)
        if "overwrite" in source and "on_repeat" not in source:
            settings["on_repeat"] = "replace" if source["overwrite"] else "keep"
    config = dataclasses.replace(Config(), **settings)
    return dataclasses.replace(config, overwrite=config.on_repeat != "keep")


def check_flag(key: str, value: object) -> Any:
    return _checked("--" + key.replace("_", "-"), key, value)


def validate_paths(config: Config, source: str) -> None:
    """What can only be checked against the machine: persist_dir must be a directory if it exists, and
    metrics need their library."""
    path = config.persist_dir
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ConfigError(
            f"{source}: persist_dir: {path} exists and is not a directory; remove it or choose another path"
        )
    if config.metrics_address and importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(
            f"{source}: metrics_address: needs prometheus-client, which comes with an extra: "
            "pip install 'nri-optimizer[metrics]' (or leave metrics_address unset)"
        )


def log_level(config: Config) -> int:
    return int(getattr(logging, config.log_level.upper()))


def load_config(flags: dict[str, Any]) -> Config:
    """Defaults < config file < flags; every failure is a one-line ConfigError."""
    path = flags.pop("config", None)
    if path is None and os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
    file_settings = read_file(path) if path else {}
    flag_settings = {key: check_flag(key, value) for key, value in flags.items() if key in KEYS}
    _check_repeat_keys(flag_settings, "--overwrite")
    config = build(file_settings, flag_settings)
    validate_paths(config, path or "--persist-dir")
    return config
