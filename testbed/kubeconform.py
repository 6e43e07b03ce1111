"""kubeconform and the Kubernetes JSON schemas it validates manifests against, installed by name into the cache.

- kubeconform: the Go module ``github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0`` (``go install``), into
  ``<cache>/tools/kubeconform-v0.7.0/bin``;
- the schemas: the PyPI package ``kubernetes-validate`` 1.37.0 (``pip download``; its bundled schemas only), into
  ``<cache>/tools/k8s-schemas-1.37.0/``.

kubeconform fetches schemas from GitHub by default, which no machine of this project reaches; the schemas
kubernetes-validate bundles are the same OpenAPI-derived ones. Their ``$id`` (``https://kubernetes.io/api/...``) and
their references (``/api/_definitions.json#...``) resolve against kubernetes.io, so each is written with the ``$id``
dropped and the references made relative to the file: then kubeconform resolves them on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed import TestbedError, debs, toolchain

MODULE = "github.com/yannh/kubeconform/cmd/kubeconform"
VERSION = "v0.7.0"
SCHEMAS_PACKAGE = "kubernetes-validate"
SCHEMAS_VERSION = "1.37.0"
# The Kubernetes versions manifests are checked against: the oldest still in wide use on nodes whose containerd
# speaks NRI, and the newest the schemas cover.
KUBERNETES_VERSIONS = ("1.29.0", "1.37.0")
_BUNDLED = "kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
_REMOTE_DEFINITIONS = "/api/_definitions.json"


def kubeconform(*, cache: Path | None = None) -> Path:
    """The kubeconform binary, built with go install on first use."""
    cache = cache or debs.cache_dir()
    root = cache / "tools" / f"kubeconform-{VERSION}"
    installed = toolchain._installed_once(f"kubeconform {VERSION}", root, ("kubeconform",), _build, cache, None)
    return installed.paths[0]


def schemas(*, cache: Path | None = None) -> Path:
    """A directory of ``v<version>-standalone-strict/<kind>-<group>-<version>.json`` for KUBERNETES_VERSIONS."""
    cache = cache or debs.cache_dir()
    root = cache / "tools" / f"k8s-schemas-{SCHEMAS_VERSION}"
    if all((root / f"v{v}-standalone-strict").is_dir() for v in KUBERNETES_VERSIONS):
        return root
    with debs._locked(cache / "tools"), tempfile.TemporaryDirectory(dir=cache / "tools", prefix=".tmp-") as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--dest",
                tmp,
                f"{SCHEMAS_PACKAGE}=={SCHEMAS_VERSION}",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        staging = Path(tmp) / "schemas"
        with zipfile.ZipFile(wheel) as bundle:
            for version in KUBERNETES_VERSIONS:
                prefix = _BUNDLED.format(version=version)
                members = [name for name in bundle.namelist() if name.startswith(prefix) and name.endswith(".json")]
                if not members:
                    raise TestbedError(f"{wheel.name} has no schemas for Kubernetes {version}")
                out = staging / f"v{version}-standalone-strict"
                out.mkdir(parents=True)
                for name in members:
                    schema = _local(json.loads(bundle.read(name)))
                    (out / Path(name).name).write_text(json.dumps(schema))
        if root.exists():
            shutil.rmtree(root)
        os.rename(staging, root)
    return root


def validate(manifests: Sequence[Path], *, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    """kubeconform -strict on the manifests, once per Kubernetes version; the last run that failed, else the last."""
    binary, location = kubeconform(cache=cache), schemas(cache=cache)
    template = (
        f"{location}/{{{{ .NormalizedKubernetesVersion }}}}-standalone{{{{ .StrictSuffix }}}}/"
        "{{ .ResourceKind }}{{ .KindSuffix }}.json"
    )
    result: subprocess.CompletedProcess[str] | None = None
    for version in KUBERNETES_VERSIONS:
        result = subprocess.run(
            [
                str(binary),
                "-strict",
                "-summary",
                "-output",
                "text",
                "-kubernetes-version",
                version,
                "-schema-location",
                template,
                *map(str, manifests),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return result
    assert result is not None
    return result


def _local(node: Any) -> Any:
    """A bundled schema with its $id dropped and kubernetes.io references made relative to its own directory."""
    if isinstance(node, dict):
        return {
            key: (
                value.replace(_REMOTE_DEFINITIONS, "_definitions.json", 1)
                if key == "$ref" and isinstance(value, str)
                else _local(value)
            )
            for key, value in node.items()
            if key != "$id"
        }
    if isinstance(node, list):
        return [_local(item) for item in node]
    return node


def _build(staging: Path, cache: Path, log: Path, say: Any) -> None:
    go = shutil.which("go")
    if go is None:
        raise TestbedError("kubeconform needs Go (https://go.dev/dl, or Debian's golang-go) to be built once")
    gopath = cache / "go"
    env = dict(
        os.environ,
        GOBIN=str(staging / "bin"),
        GOPATH=str(gopath),
        GOMODCACHE=str(gopath / "mod"),
        GOCACHE=str(gopath / "build"),
        GOFLAGS="-modcacherw",
        GOTOOLCHAIN="local",
    )
    with open(log, "w") as out:
        done = subprocess.run(
            [go, "install", f"{MODULE}@{VERSION}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=staging,
            check=False,
        )
    if done.returncode != 0:
        raise TestbedError(f"go install {MODULE}@{VERSION} failed: see {log}")
