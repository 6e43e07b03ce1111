"""Image references, parsed strictly, and the result file name upstream derives from them.

The grammar is the distribution/reference one that containerd uses. Being strict is also what keeps a
hostile annotation out of the file system: no path component of a valid reference can be ``..``, empty,
or contain NUL, and the lengths are bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nri_optimizer.errors import ReferenceError as ReferenceError

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)

DEFAULT_DOMAIN = "docker.io"
MAX_NAME_LENGTH = 255  # distribution/reference's NameTotalLengthMax

# Longest suffix we append to a result file name (".timeout<seconds>s.json"); file names stop at 255 bytes.
_MAX_SUFFIX = len(".timeout9999999999s.json")


@dataclass(frozen=True)
class Reference:
    domain: str
    path: str  # e.g. "library/nginx"
    tag: str  # "" when the reference has only a digest
    digest: str

    @property
    def result_dir(self) -> str:
        """Directory under persist_dir, as upstream: the repository path without the registry or the name."""
        return self.path.rpartition("/")[0]

    @property
    def result_name(self) -> str:
        """``<name>:<tag>`` as upstream, or ``<name>@<digest>`` for a digest reference (upstream crashes)."""
        name = self.path.rpartition("/")[2]
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag}"

    def __str__(self) -> str:
        text = f"{self.domain}/{self.path}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse(text: str) -> Reference:
    """Normalize like containerd's ParseDockerRef: docker.io/library/ for short names, ``latest`` when
    neither tag nor digest is given, and a digest wins over a tag."""
    match = _REFERENCE.fullmatch(text)
    if match is None:
        raise ReferenceError(f"not a valid image reference: {text[:300]!r}")
    domain, path = match.group("domain"), match.group("path")
    # "foo/bar": "foo" is a registry only if it looks like a host (a dot, a port, or localhost).
    if domain is not None and not ("." in domain or ":" in domain or domain == "localhost" or domain != domain.lower()):
        domain, path = None, f"{domain}/{path}"
    if domain is None:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = f"library/{path}"
    if len(domain) + 1 + len(path) > MAX_NAME_LENGTH:
        raise ReferenceError(f"image name longer than {MAX_NAME_LENGTH} characters: {text[:300]!r}")
    digest = match.group("digest") or ""
    tag = "" if digest else (match.group("tag") or "latest")
    reference = Reference(domain, path, tag, digest)
    if len(reference.result_name.encode()) + _MAX_SUFFIX > 255:
        raise ReferenceError(f"image name and tag too long for a result file name: {text[:300]!r}")
    return reference
