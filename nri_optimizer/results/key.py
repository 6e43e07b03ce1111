"""Which result a trace belongs to: its image's, or, with a workload key, its image's for that workload.

A result is named as upstream names it: ``<persist_dir>/<repository path>/<name>:<tag>`` (``<name>@<digest>`` for a
digest reference), with ``.timeout<N>s`` appended when a timeout is set. A workload's own result appends
``+<workload>``: "+" is in no repository name, tag or digest, so a workload's result never collides with an image's
plain one (nor with any name upstream writes), and a name splits back into the two at its first "+".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nri_optimizer.errors import ReferenceError
from nri_optimizer.results.reference import Reference

WORKLOAD_SEPARATOR = "+"

# A Kubernetes label value, non-empty (a container name, DNS-1123, is one too): the names a workload may have. Its
# alphabet keeps the file name plain; its 63 characters keep it short.
_WORKLOAD = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")

# The longest name the store puts beside a result's name: "<name>.json" (results.store).
_LONGEST_SUFFIX = len(".json")
_NAME_MAX = 255  # bytes in a file name (NAME_MAX)


@dataclass(frozen=True)
class ResultKey:
    directory: str  # under persist_dir: the repository path without the registry or the name ("" for none)
    name: str  # the plain list's file name

    def __str__(self) -> str:
        return f"{self.directory}/{self.name}" if self.directory else self.name


def valid_workload(value: str) -> bool:
    return _WORKLOAD.fullmatch(value) is not None


def result_key(image: Reference, *, timeout: int = 0, workload: str = "") -> ResultKey:
    """The result of a trace of ``image``; ``workload`` "" for the image's plain result."""
    name = image.result_name + (f".timeout{timeout}s" if timeout else "")
    if workload:
        if not valid_workload(workload):
            raise ReferenceError(
                f"not a valid workload name (a label value: letters, digits, '-', '_', '.', "
                f"at most 63): {workload[:100]!r}"
            )
        name += WORKLOAD_SEPARATOR + workload
    if len(name.encode()) + _LONGEST_SUFFIX > _NAME_MAX:
        raise ReferenceError(f"image name, tag and workload too long for a result file name: {name[:300]!r}")
    return ResultKey(image.result_dir, name)


def split_name(name: str) -> tuple[str, str]:
    """(the image's result name, the workload or "") of a result file name."""
    plain, _, workload = name.partition(WORKLOAD_SEPARATOR)
    return plain, workload
