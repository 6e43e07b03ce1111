"""nri_optimizer.nydus.image without nydus-image: the config rule, the bootstrap layer, reading source layouts
(the whole conversion runs in tests/e2e/test_nydus_build.py)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from nri_optimizer.errors import ImageError
from nri_optimizer.nydus import image
from nri_optimizer.nydus.build import Blob, ImageBuild, LayerBuild
from nri_optimizer.oci.registry import OCI_MANIFEST


def built(*has_blob: bool) -> ImageBuild:
    layers = tuple(
        LayerBuild(Path(f"layer-{n}.boot"), Blob(Path(f"b{n}"), f"sha256:{n:064x}", 10) if blob else None, None)
        for n, blob in enumerate(has_blob)
    )
    return ImageBuild(Path("image.boot"), layers, (), (), (), ())


SOURCE: dict[str, Any] = {
    "architecture": "amd64",
    "os": "linux",
    "config": {"Entrypoint": ["/app"], "Env": ["A=1"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:" + "c" * 64]},
    "history": [
        {"created_by": "FROM"},
        {"created_by": "ENV A=1", "empty_layer": True},
        {"created_by": "RUN x"},
        {"created_by": "RUN rm"},
    ],
}


def test_the_config_has_the_blobs_then_the_bootstrap_and_a_history_line_for_it() -> None:
    config = image.nydus_config(SOURCE, built(True, True, False), "sha256:" + "f" * 64)
    assert config["rootfs"] == {
        "type": "layers",
        "diff_ids": [f"sha256:{0:064x}", f"sha256:{1:064x}", "sha256:" + "f" * 64],
    }
    assert config["history"] == [
        {"created_by": "FROM"},
        {"created_by": "ENV A=1", "empty_layer": True},
        {"created_by": "RUN x"},
        {"created_by": "RUN rm", "empty_layer": True},
        {"created_by": "nri-optimizer convert", "comment": "Nydus Bootstrap Layer"},
    ]
    assert config["config"] == SOURCE["config"]
    assert SOURCE["history"][3] == {"created_by": "RUN rm"}  # the source is left as it was


def test_a_history_that_does_not_match_the_layers_is_kept_as_it_is_plus_the_bootstrap_line() -> None:
    source = {**SOURCE, "history": [{"created_by": "squashed"}]}
    assert image.nydus_config(source, built(True, False, True), "sha256:" + "f" * 64)["history"] == [
        {"created_by": "squashed"},
        image.BOOTSTRAP_HISTORY,
    ]
    assert "history" not in image.nydus_config({"rootfs": {}}, built(True), "sha256:" + "f" * 64)


def test_the_bootstrap_layer_holds_image_boot_and_is_the_same_for_the_same_bootstrap(tmp_path: Path) -> None:
    boot = tmp_path / "image.boot"
    boot.write_bytes(b"\x00rafs" * 1000)
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    descriptor, diff_id = image.bootstrap_layer(boot, first)
    assert image.bootstrap_layer(boot, second) == (descriptor, diff_id)
    [stored] = first.iterdir()  # nothing else left behind
    layer = stored.read_bytes()
    assert descriptor == {
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
        "digest": f"sha256:{hashlib.sha256(layer).hexdigest()}",
        "size": len(layer),
        "annotations": {
            "containerd.io/snapshot/nydus-bootstrap": "true",
            "containerd.io/snapshot/nydus-fs-version": "6",
        },
    }
    assert stored.name == hashlib.sha256(layer).hexdigest()
    assert diff_id == f"sha256:{hashlib.sha256(gzip.decompress(layer)).hexdigest()}"
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert [(m.name, m.mode, m.uid, m.gid, m.mtime) for m in tar] == [
            ("image", 0o755, 0, 0, 0),
            ("image/image.boot", 0o444, 0, 0, 0),
        ]
        assert tar.extractfile("image/image.boot").read() == boot.read_bytes()  # type: ignore[union-attr]


def layout(
    root: Path,
    layers: list[tuple[bytes, str]],
    *,
    diff_ids: list[str] | None = None,
    index: dict[str, Any] | None = None,
) -> Path:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes, media_type: str) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    stored = [(data, put(data, media_type)) for data, media_type in layers]
    unpacked = [gzip.decompress(data) if media_type.endswith("gzip") else data for data, media_type in layers]
    config = {
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids or [f"sha256:{hashlib.sha256(u).hexdigest()}" for u in unpacked],
        }
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": put(json.dumps(config).encode(), image.OCI_CONFIG),
        "layers": [d for _, d in stored],
    }
    descriptor = put(json.dumps(manifest).encode(), OCI_MANIFEST)
    (root / "index.json").write_text(json.dumps(index or {"schemaVersion": 2, "manifests": [descriptor]}))
    return root


TAR = b"a tar, as far as this module cares" + b"\0" * 990


def test_layers_of_every_tar_media_type_are_uncompressed_and_checked(tmp_path: Path) -> None:
    source = image.read_layout(
        layout(
            tmp_path / "src",
            [
                (gzip.compress(TAR), "application/vnd.oci.image.layer.v1.tar+gzip"),
                (gzip.compress(TAR + b"2"), "application/vnd.docker.image.rootfs.diff.tar.gzip"),
                (TAR + b"3", "application/vnd.oci.image.layer.v1.tar"),
            ],
        )
    )
    tars = image.uncompressed_layers(source, tmp_path)
    assert [path.read_bytes() for path in tars] == [TAR, TAR + b"2", TAR + b"3"]


def test_a_layer_that_does_not_match_its_diff_id_is_refused(tmp_path: Path) -> None:
    source = image.read_layout(
        layout(tmp_path / "src", [(gzip.compress(TAR), image.OCI_LAYER_GZIP)], diff_ids=["sha256:" + "0" * 64])
    )
    with pytest.raises(ImageError, match=r"uncompresses to sha256:[0-9a-f]{64}, the config says sha256:0{64}"):
        image.uncompressed_layers(source, tmp_path)


def test_a_zstd_layer_is_refused_by_name(tmp_path: Path) -> None:
    source = image.read_layout(layout(tmp_path / "src", [(b"zstd", "application/vnd.oci.image.layer.v1.tar+zstd")]))
    with pytest.raises(ImageError, match=r"unsupported layer media type .*tar\+zstd \(tar and tar\+gzip only\)"):
        image.uncompressed_layers(source, tmp_path)


def test_a_layout_must_name_one_image_manifest(tmp_path: Path) -> None:
    two = {"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "1" * 64}, {"digest": "sha256:" + "2" * 64}]}
    with pytest.raises(ImageError, match="expected one image manifest, found 2"):
        image.read_layout(layout(tmp_path / "two", [], index=two))
    with pytest.raises(ImageError, match="expected one image manifest named v1, found 0"):
        image.read_layout(layout(tmp_path / "one", []), "v1")
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "sha256:" + "3" * 64}],
    }
    with pytest.raises(ImageError, match="the image is an index"):
        image.read_layout(layout(tmp_path / "index", [], index=index))
    with pytest.raises(ImageError, match=r"nowhere/index\.json: "):
        image.read_layout(tmp_path / "nowhere")


@pytest.mark.parametrize("digest", ["sha256:../../../etc/passwd", "sha512:" + "a" * 128, "sha256:" + "A" * 64])
def test_a_digest_that_is_not_sha256_hex_names_no_path(digest: str) -> None:
    with pytest.raises(ImageError, match="unsupported digest"):
        image.blob_path(Path("/layout"), digest)
