"""The registry client against a small registry of our own on loopback (http.server in a thread): the token and
Basic flows, credentials kept from redirected storage, digests checked, pushes streamed and skipped when the blob
is there, indexes resolved, plain HTTP only for an insecure registry, and one-line errors."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nri_optimizer.errors import RegistryError, RegistryUnreachable
from nri_optimizer.oci.registry import OCI_INDEX, OCI_MANIFEST, Registry, digest_of, docker_credentials


@dataclass
class FakeRegistry:
    """What the fake serves and what it saw."""

    auth: str = ""  # "", "bearer" or "basic"
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # tag or digest -> (body, type)
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Authorization)
    corrupt: set[str] = field(default_factory=set)  # blobs served with other content
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def handler_for(fake: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def allowed(self) -> bool:
            given = self.headers.get("Authorization", "")
            if fake.auth == "bearer" and not given.startswith("Bearer token-for-"):
                realm = f"http://{fake.address}/token"
                self.answer(
                    401,
                    b'{"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}',
                    {"WWW-Authenticate": f'Bearer realm="{realm}",service="fake",scope="repository:app:pull"'},
                )
                return False
            if fake.auth == "basic" and given != "Basic " + base64.b64encode(b"alice:secret").decode():
                self.answer(401, b"", {"WWW-Authenticate": 'Basic realm="fake"'})
                return False
            return True

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            fake.seen.append((self.command, url.path, self.headers.get("Authorization", "")))
            if url.path == "/token":
                scope = urllib.parse.parse_qs(url.query)["scope"][0]
                self.answer(200, json.dumps({"token": f"token-for-{scope}"}).encode())
            elif url.path.startswith("/storage/"):
                digest = url.path.removeprefix("/storage/")
                data = fake.blobs[digest]
                self.answer(200, data + b"!" if digest in fake.corrupt else data)
            elif not self.allowed():
                return
            elif url.path == "/v2/":
                self.answer(200, b"{}")
            elif "/blobs/" in url.path:
                digest = url.path.rsplit("/", 1)[1]
                if digest in fake.blobs:  # served from "storage", as large registries redirect blob reads
                    self.answer(307, b"", {"Location": f"http://{fake.address}/storage/{digest}"})
                else:
                    self.answer(404, b'{"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}')
            elif "/manifests/" in url.path:
                reference = url.path.rsplit("/", 1)[1]
                if reference not in fake.manifests:
                    self.answer(404, b'{"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}')
                else:
                    body, media_type = fake.manifests[reference]
                    self.answer(200, body, {"Content-Type": media_type})

        def do_POST(self) -> None:
            fake.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
            if self.allowed():
                self.answer(202, b"", {"Location": "/v2/app/blobs/uploads/u1?_state=s"})

        def do_PUT(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            fake.seen.append((self.command, self.path, self.headers.get("Authorization", "")))
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if not self.allowed():
                return
            if "/blobs/uploads/" in url.path:
                digest = urllib.parse.parse_qs(url.query)["digest"][0]
                assert urllib.parse.parse_qs(url.query)["_state"] == ["s"]
                if digest_of(body) != digest:
                    self.answer(400, b'{"errors": [{"code": "DIGEST_INVALID", "message": "digest mismatch"}]}')
                    return
                fake.blobs[digest] = body
                self.answer(201)
            else:
                fake.manifests[url.path.rsplit("/", 1)[1]] = (body, self.headers["Content-Type"])
                self.answer(201)

    return Handler


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    registry = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(registry))
    registry.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield registry
    server.shutdown()
    server.server_close()
    thread.join()


def put_image(fake: FakeRegistry, tag: str = "1") -> tuple[bytes, bytes]:
    config, layer = b'{"architecture": "amd64", "os": "linux"}', b"layer bytes" * 100
    fake.blobs |= {digest_of(config): config, digest_of(layer): layer}
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"digest": digest_of(config), "size": len(config)},
            "layers": [{"digest": digest_of(layer), "size": len(layer)}],
        }
    ).encode()
    fake.manifests[tag] = (manifest, OCI_MANIFEST)
    fake.manifests[digest_of(manifest)] = (manifest, OCI_MANIFEST)
    return manifest, layer


def test_a_plain_http_registry_is_reached_only_when_named_insecure(fake: FakeRegistry) -> None:
    assert Registry(fake.address, insecure=True).base_url == f"http://{fake.address}"
    with pytest.raises(RegistryUnreachable) as caught:
        Registry(fake.address).base_url  # noqa: B018
    assert str(caught.value).startswith(f"cannot reach registry {fake.address}: https://{fake.address}/v2/: ")
    assert str(caught.value).endswith("(a plain-HTTP registry must be named insecure)")


def test_nothing_listening_is_one_line() -> None:
    with pytest.raises(RegistryUnreachable) as caught:
        Registry("127.0.0.1:1", insecure=True).base_url  # noqa: B018
    assert str(caught.value) == (
        "cannot reach registry 127.0.0.1:1: https://127.0.0.1:1/v2/: Connection refused; "
        "http://127.0.0.1:1/v2/: Connection refused"
    )


def test_a_bearer_challenge_gets_a_token_for_the_repository_used_from_then_on(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    fake.auth = "bearer"
    manifest, layer = put_image(fake)
    client = Registry(fake.address, insecure=True, docker_config=tmp_path / "none.json")
    assert client.image_manifest("app", "1").body == manifest
    assert client.pull_blob("app", digest_of(layer), tmp_path / "layer") == len(layer)
    assert (tmp_path / "layer").read_bytes() == layer
    token = "Bearer token-for-repository:app:pull"
    assert [(m, p, a) for m, p, a in fake.seen if p != "/v2/"] == [
        ("GET", "/v2/app/manifests/1", ""),
        ("GET", "/token", ""),  # anonymous: no credentials in the Docker config
        ("GET", "/v2/app/manifests/1", token),
        ("GET", f"/v2/app/blobs/{digest_of(layer)}", token),
        ("GET", f"/storage/{digest_of(layer)}", ""),  # the redirect target never sees the token
    ]


def test_credentials_of_the_docker_config_go_to_the_realm_and_to_a_basic_registry(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"auths": {fake.address: {"auth": base64.b64encode(b"alice:secret").decode()}}}))
    basic = "Basic " + base64.b64encode(b"alice:secret").decode()
    put_image(fake)
    fake.auth = "bearer"
    Registry(fake.address, insecure=True, docker_config=config).manifest("app", "1")
    assert ("GET", "/token", basic) in fake.seen
    fake.auth, fake.seen[:] = "basic", []
    Registry(fake.address, insecure=True, docker_config=config).manifest("app", "1")
    assert [(m, p, a) for m, p, a in fake.seen if p != "/v2/"] == [
        ("GET", "/v2/app/manifests/1", ""),
        ("GET", "/v2/app/manifests/1", basic),
    ]
    fake.seen[:] = []
    with pytest.raises(RegistryError, match=r"^GET http://127\.0\.0\.1:\d+/v2/app/manifests/1: HTTP 401$"):
        Registry(fake.address, insecure=True, docker_config=tmp_path / "none.json").manifest("app", "1")


def test_a_blob_whose_content_does_not_match_its_digest_is_refused_and_not_kept(
    fake: FakeRegistry, tmp_path: Path
) -> None:
    _, layer = put_image(fake)
    fake.corrupt.add(digest_of(layer))
    client = Registry(fake.address, insecure=True)
    with pytest.raises(RegistryError, match="the content does not match its digest"):
        client.pull_blob("app", digest_of(layer), tmp_path / "layer")
    assert not (tmp_path / "layer").exists()
    with pytest.raises(RegistryError, match="only sha256 digests are supported"):
        client.pull_blob("app", "sha512:" + "0" * 128, tmp_path / "layer")


def test_a_push_streams_each_blob_once_then_puts_the_manifest(fake: FakeRegistry, tmp_path: Path) -> None:
    data = b"x" * (3 << 20)
    (tmp_path / "blob").write_bytes(data)
    client = Registry(fake.address, insecure=True)
    assert client.push_blob("app", digest_of(data), tmp_path / "blob") is True
    assert client.push_blob("app", digest_of(data), tmp_path / "blob") is False  # the repository has it
    assert fake.blobs[digest_of(data)] == data
    manifest = b'{"schemaVersion": 2}'
    assert client.push_manifest("app", "v1", manifest, OCI_MANIFEST) == digest_of(manifest)
    assert fake.manifests["v1"] == (manifest, OCI_MANIFEST)
    assert [(m, p.split("?")[0]) for m, p, _ in fake.seen if p != "/v2/"] == [
        ("HEAD", f"/v2/app/blobs/{digest_of(data)}"),
        ("POST", "/v2/app/blobs/uploads/"),
        ("PUT", "/v2/app/blobs/uploads/u1"),
        ("HEAD", f"/v2/app/blobs/{digest_of(data)}"),
        ("PUT", "/v2/app/manifests/v1"),
    ]
    with pytest.raises(RegistryError, match=r"HTTP 400 DIGEST_INVALID: digest mismatch$"):
        client.push_blob("app", "sha256:" + "1" * 64, b"other")


def test_an_index_resolves_to_the_platform_asked(fake: FakeRegistry) -> None:
    manifest, _ = put_image(fake)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": "sha256:" + "a" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
                {"digest": digest_of(manifest), "platform": {"os": "linux", "architecture": "amd64"}},
            ],
        }
    ).encode()
    fake.manifests["multi"] = (index, OCI_INDEX)
    client = Registry(fake.address, insecure=True)
    assert client.image_manifest("app", "multi", ("linux", "amd64")).digest == digest_of(manifest)
    with pytest.raises(RegistryError, match=r"/app:multi has no linux/s390x image$"):
        client.image_manifest("app", "multi", ("linux", "s390x"))
    with pytest.raises(RegistryError, match=r"HTTP 404 MANIFEST_UNKNOWN: manifest unknown$"):
        client.manifest("app", "nope")


def test_docker_config_entries_and_errors(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    hub = base64.b64encode(b"bob:pw:with:colons").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": hub},
                    "https://reg.example": {"auth": base64.b64encode(b"a:b").decode()},
                }
            }
        )
    )
    assert docker_credentials("docker.io", config) == ("bob", "pw:with:colons")
    assert docker_credentials("reg.example", config) == ("a", "b")
    assert docker_credentials("other.example", config) is None
    assert docker_credentials("docker.io", tmp_path / "missing.json") is None
    config.write_text("{not json")
    with pytest.raises(RegistryError, match=r"config\.json: not a Docker config we can read"):
        docker_credentials("docker.io", config)


def test_digest_of_is_sha256() -> None:
    assert digest_of(b"abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()
