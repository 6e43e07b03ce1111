"""``nri-optimizer push-list IMAGE``: attach this node's recorded list of IMAGE to the image in its registry, as an
OCI artifact that refers to the image's manifest (nri_optimizer.oci.artifacts has the format).

The list is the plugin's result for IMAGE under persist_dir (as the daemon names it: ``timeout`` and ``--workload``
included), or ``--list FILE`` with ``FILE.csv`` and ``FILE.json`` beside it when they are there. A tag is resolved to
its manifest digest first; an index to this machine's platform (``--platform``). stdout gets one line, the artifact
by digest (``REGISTRY/REPOSITORY@sha256:...``); what was done goes to stderr. A push whose list this node's newest
one there already is pushes nothing and says so.

Credentials come from the Docker config (``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``); a
registry that does not speak TLS must be named insecure (``--insecure``).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nri_optimizer import config as cfg
from nri_optimizer.errors import ResultError, UsageError
from nri_optimizer.oci import artifacts
from nri_optimizer.oci.registry import Registry, host_platform_name
from nri_optimizer.results import reference
from nri_optimizer.results.key import ResultKey, result_key, valid_workload
from nri_optimizer.results.store import read_result

PROG = "nri-optimizer push-list"
NODE_NAME_VARIABLE = "NODE_NAME"  # what a DaemonSet sets from the downward API (spec.nodeName)


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """IMAGE and the options push-list and pull-list share: where the registry is, which list, which config."""
    parser.add_argument("image", metavar="IMAGE", help="the image, as its registry names it (a tag or a digest)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="the registry may be plain HTTP or have a certificate that does not verify",
    )
    parser.add_argument(
        "--platform",
        help="OS/ARCH whose manifest the list belongs to, for a multi-platform image "
        f"(default: this machine's, {'/'.join(host_platform_name())})",
    )
    parser.add_argument("--workload", default="", help="a workload's own list of the image (workload_key)")
    parser.add_argument(
        "--config", help=f"TOML config file, for persist_dir and timeout (default: {cfg.DEFAULT_CONFIG_FILE})"
    )
    parser.add_argument("--persist-dir", dest="persist_dir", default=argparse.SUPPRESS)


@dataclass(frozen=True)
class Local:
    image: reference.Reference
    result: ResultKey  # the image's result (or the workload's) under persist_dir
    config: cfg.Config

    @property
    def result_path(self) -> str:
        return os.path.join(self.config.persist_dir, self.result.directory, self.result.name)


def parse_image(text: str) -> reference.Reference:
    try:
        return reference.parse(text)
    except reference.ReferenceError as exc:
        raise UsageError(f"IMAGE {text}: {exc}") from None


def local(image_text: str, *, workload: str, flags: dict[str, Any]) -> Local:
    """IMAGE, the config (``flags``: config, persist_dir), and IMAGE's result under persist_dir."""
    image = parse_image(image_text)
    config = cfg.load_config(dict(flags))
    try:
        result = result_key(image, timeout=config.timeout, workload=workload)
    except reference.ReferenceError as exc:
        raise UsageError(f"--workload {workload}: {exc}") from None
    return Local(image, result, config)


def config_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {key: value for key, value in vars(args).items() if key in ("config", "persist_dir")}


def subject(image: reference.Reference, *, insecure: bool, platform_text: str | None) -> artifacts.Subject:
    """The image manifest IMAGE names in its registry (a tag resolved, an index resolved to the platform)."""
    registry = Registry(image.domain, insecure=insecure)
    return artifacts.resolve(registry, image.path, image.digest or image.tag, parse_platform(platform_text))


def parse_platform(text: str | None) -> tuple[str, str] | None:
    """--platform OS/ARCH as a pair (None: not given)."""
    if text is None:
        return None
    os_name, _, arch = text.partition("/")
    if not os_name or not arch:
        raise UsageError(f"--platform {text}: expected OS/ARCH, e.g. linux/amd64")
    return os_name, arch


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Attach this node's recorded list of IMAGE to the image in its registry (an OCI artifact that "
        "refers to the image's manifest), for other nodes and the build pipeline (pull-list, convert "
        "--from-registry).",
    )
    add_image_arguments(parser)
    parser.add_argument(
        "--list",
        dest="list_file",
        help="the list to push (default: the plugin's result for IMAGE "
        "under persist_dir); FILE.csv and FILE.json beside it go too",
    )
    parser.add_argument(
        "--node",
        default=os.environ.get(NODE_NAME_VARIABLE) or socket.gethostname(),
        help=f"the node the list was recorded on (default: ${NODE_NAME_VARIABLE}, else the host name: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not args.node:
        raise UsageError("--node: a node name must not be empty")
    if args.list_file is not None:  # the config is not needed (the daemon's publish runs this way)
        image, list_path = parse_image(args.image), os.path.abspath(args.list_file)
        if args.workload and not valid_workload(args.workload):
            raise UsageError(f"--workload {args.workload}: not a valid workload name (a label value)")
    else:
        here = local(args.image, workload=args.workload, flags=config_flags(args))
        image, list_path = here.image, here.result_path
    files = _read_files(list_path)  # without a list there is nothing to ask the registry
    attached_to = subject(image, insecure=args.insecure, platform_text=args.platform)
    published = artifacts.push_list(
        attached_to, files, name=os.path.basename(list_path), node=args.node, workload=args.workload
    )
    where = f"{attached_to.registry.domain}/{attached_to.repository}@{published.digest}"
    if published.unchanged:
        _say(f"{where} is node {args.node}'s newest list of {image} there, and it is this list: nothing pushed")
    else:
        _say(f"pushed {list_path} from node {args.node} as {where}, a referrer of {attached_to}")
    print(where)
    return 0


def _read_files(list_path: str) -> artifacts.ListFiles:
    """The plain list, CSV and JSON of one result (one set of them: results.store)."""
    try:
        files = read_result(list_path)
    except (OSError, ResultError) as exc:
        raise UsageError(f"cannot read the list {list_path}: {getattr(exc, 'strerror', None) or exc}") from None
    if "" not in files:
        raise UsageError(
            f"no recorded list at {list_path}; record one first (nri-optimizer profile IMAGE) or pass --list"
        )
    return artifacts.ListFiles(files[""], files.get(".csv"), files.get(".json"))


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)
