"""Which containers are traced: the operator's rules (config keys) and the pod's own word (annotations).

Decided at StartContainer from what NRI passes: the pod's namespace and annotations, the container's name and
image. In this order, the first rule that speaks decides:

1. The pod's annotation ``trace.nri-optimizer.io/container.<name>`` (for that container), else
   ``trace.nri-optimizer.io/pod`` (every container of the pod), set to ``"false"``: not traced. A pod may always
   opt out.
2. ``namespace_include`` / ``namespace_exclude``: a pod whose namespace matches no include pattern (when there
   are any), or matches an exclude pattern, is not traced.
3. ``image_include`` / ``image_exclude``: the same for the image's full name as containerd normalises it
   (``docker.io/library/nginx:latest``, ``registry.example/team/app@sha256:…``).
4. ``mode = "opt-in"``: only containers whose annotation (as in 1) is ``"true"`` are traced. ``mode = "all"``
   (the default): every container the rules above leave.

An annotation cannot override 2 or 3: those are the node operator's limits, the annotation is the pod author's.

Patterns are shell-style, matched against the whole name: ``*`` any run of characters (``/`` included), ``?``
one character, ``[abc]`` / ``[!abc]`` one of / none of a set. A pattern that could never match what it is
compared with (empty, an unclosed ``[``, white space) is a config error.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

ANNOTATION_DOMAIN = "trace.nri-optimizer.io"
POD_ANNOTATION = f"{ANNOTATION_DOMAIN}/pod"
CONTAINER_ANNOTATION_PREFIX = f"{ANNOTATION_DOMAIN}/container."
MODES = ("all", "opt-in")

# Annotation values, as Kubernetes users write booleans in YAML strings.
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def container_annotation(name: str) -> str:
    return CONTAINER_ANNOTATION_PREFIX + name


def pattern_problem(pattern: str) -> str | None:
    """Why a pattern can never match a name, or None if it is usable."""
    if not pattern:
        return "an empty pattern matches nothing"
    if any(c.isspace() for c in pattern):
        return f"pattern {pattern!r} contains white space, which no name has"
    i = 0
    while (i := pattern.find("[", i)) >= 0:
        # As fnmatch reads a set: a "]" right after "[" or "[!" is a member, not the end.
        j = i + 1
        if pattern[j : j + 1] == "!":
            j += 1
        if pattern[j : j + 1] == "]":
            j += 1
        end = pattern.find("]", j)
        if end < 0:
            return f"pattern {pattern!r} has a '[' without its ']'"
        i = end + 1
    return None


class Patterns:
    """A list of shell-style patterns, matched as one regular expression."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._match = re.compile("|".join(fnmatch.translate(p) for p in patterns)).match if patterns else None

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def matches(self, name: str) -> bool:
        return self._match is not None and self._match(name) is not None


class Skip(NamedTuple):
    """Why a container is not traced: ``rule`` for the metrics' reason label, ``message`` for the log."""

    rule: str  # "annotation", "namespace", "image", "opt-in"
    message: str


class Selection:
    """The config's rules, compiled; ``skip()`` decides for one container."""

    def __init__(
        self,
        mode: str = "all",
        *,
        namespace_include: Sequence[str] = (),
        namespace_exclude: Sequence[str] = (),
        image_include: Sequence[str] = (),
        image_exclude: Sequence[str] = (),
    ) -> None:
        """Patterns as the config checked them (pattern_problem)."""
        self.mode = mode
        self.namespace_include = Patterns(namespace_include)
        self.namespace_exclude = Patterns(namespace_exclude)
        self.image_include = Patterns(image_include)
        self.image_exclude = Patterns(image_exclude)

    def skip(self, namespace: str, annotations: Mapping[str, str], container: str, image: str) -> Skip | None:
        """Why this container is not to be traced, or None if it is (the rules of the module docstring)."""
        key, wish = _annotation(annotations, container)
        if wish is not None and wish not in _TRUE:
            if wish in _FALSE:
                return Skip("annotation", f"annotation {key} = {annotations[key]!r}")
            return Skip("annotation", f'annotation {key} = {annotations[key]!r} is not "true" or "false"')
        if rule := _limit("namespace", namespace, self.namespace_include, self.namespace_exclude):
            return rule
        if rule := _limit("image", image, self.image_include, self.image_exclude):
            return rule
        if self.mode == "opt-in" and wish is None:
            return Skip(
                "opt-in",
                f'mode = "opt-in" and the pod has neither {container_annotation(container)} nor {POD_ANNOTATION} '
                '= "true"',
            )
        return None


def _annotation(annotations: Mapping[str, str], container: str) -> tuple[str, str | None]:
    """(the key that speaks for this container, its value lowered) or (the pod key, None) when neither is set."""
    for key in (container_annotation(container), POD_ANNOTATION):
        if key in annotations:
            return key, annotations[key].strip().lower()
    return POD_ANNOTATION, None


def _limit(what: str, name: str, include: Patterns, exclude: Patterns) -> Skip | None:
    if include and not include.matches(name):
        return Skip(what, f"{what} {name} matches no {what}_include pattern")
    if exclude.matches(name):
        return Skip(what, f"{what} {name} matches {what}_exclude")
    return None
