"""Referrers in the registry client, against a registry of our own on loopback for what no registry in the test bed
does: answering OCI-Subject, paging the referrers answer, and another client rewriting the tag schema's index between
our write and our read back. The real registries are tests/e2e/test_registry_lists.py."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from nri_optimizer.errors import RegistryError
from nri_optimizer.oci import registry as registry_module
from nri_optimizer.oci.registry import OCI_INDEX, OCI_MANIFEST, Registry, digest_of, referrers_tag

SUBJECT = "sha256:" + "5" * 64
TAG = referrers_tag(SUBJECT)
OURS = "application/vnd.example.ours"


@dataclass
class Fake:
    api: bool = False  # serves GET /v2/<name>/referrers/<digest>
    oci_subject: bool = False  # answers a manifest PUT with OCI-Subject
    page_size: int = 0  # > 0: the referrers answer in pages of this many, linked by Link
    clobber: int = 0  # this many index PUTs are undone at once by "another client" (back to what it was)
    manifests: dict[str, bytes] = field(default_factory=dict)
    referrers: list[dict[str, Any]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    port: int = 0


def serve(fake: Fake) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            fake.seen.append(f"GET {url.path}")
            if url.path == "/v2/":
                self.answer(200)
            elif url.path == f"/v2/app/referrers/{SUBJECT}" and fake.api:
                start = int(urllib.parse.parse_qs(url.query).get("last", ["0"])[0])
                end = start + fake.page_size if fake.page_size else len(fake.referrers)
                headers = {"Content-Type": OCI_INDEX}
                if end < len(fake.referrers):
                    headers["Link"] = f'</v2/app/referrers/{SUBJECT}?last={end}>; rel="next"'
                index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": fake.referrers[start:end]}
                self.answer(200, json.dumps(index).encode(), headers)
            elif url.path.startswith("/v2/app/manifests/") and url.path.rpartition("/")[2] in fake.manifests:
                self.answer(200, fake.manifests[url.path.rpartition("/")[2]], {"Content-Type": OCI_INDEX})
            else:
                self.answer(404, b'{"errors": [{"code": "NOT_FOUND", "message": "not here"}]}')

        def do_PUT(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            fake.seen.append(f"PUT {url.path}")
            body = self.rfile.read(int(self.headers["Content-Length"]))
            reference = url.path.rpartition("/")[2]
            before = fake.manifests.get(reference)
            fake.manifests[reference] = body
            if reference == TAG and fake.clobber:
                fake.clobber -= 1
                if before is None:
                    del fake.manifests[reference]
                else:
                    fake.manifests[reference] = before
            headers = {"OCI-Subject": SUBJECT} if fake.oci_subject and reference.startswith("sha256:") else {}
            self.answer(201, b"", headers)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def fake() -> Iterator[Fake]:
    made = Fake()
    server = serve(made)
    yield made
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_settling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "TAG_SCHEMA_SETTLE", (0.0, 0.0))


def client(fake: Fake) -> Registry:
    return Registry(f"127.0.0.1:{fake.port}", insecure=True)


def referrer(node: str, artifact_type: str = OURS) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": SUBJECT, "size": 1},
            "annotations": {"node": node},
        }
    ).encode()


def index_of(fake: Fake) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(fake.manifests[TAG])["manifests"]
    return entries


def test_a_registry_that_answers_oci_subject_is_left_to_index_it(fake: Fake) -> None:
    fake.api = fake.oci_subject = True
    body = referrer("a")
    assert client(fake).push_referrer("app", body, OCI_MANIFEST) == digest_of(body)
    assert fake.seen == ["GET /v2/", f"PUT /v2/app/manifests/{digest_of(body)}"]


def test_a_registry_with_the_api_but_no_oci_subject_is_asked_then_left_alone(fake: Fake) -> None:
    fake.api = True
    client(fake).push_referrer("app", referrer("a"), OCI_MANIFEST)
    assert fake.seen[-1] == f"GET /v2/app/referrers/{SUBJECT}" and TAG not in fake.manifests


def test_without_the_api_the_tag_schema_index_gets_it_and_drops_what_it_replaces(fake: Fake) -> None:
    mine, older, others = referrer("a"), referrer("a-old"), referrer("b")
    for body in (older, others):
        client(fake).push_referrer("app", body, OCI_MANIFEST)
    assert [d["annotations"]["node"] for d in index_of(fake)] == ["a-old", "b"]
    client(fake).push_referrer("app", mine, OCI_MANIFEST, replaces=lambda d: d["annotations"]["node"].startswith("a"))
    assert index_of(fake) == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest_of(others),
            "size": len(others),
            "artifactType": OURS,
            "annotations": {"node": "b"},
        },
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest_of(mine),
            "size": len(mine),
            "artifactType": OURS,
            "annotations": {"node": "a"},
        },
    ]


def test_an_index_another_client_rewrote_meanwhile_gets_ours_again(fake: Fake) -> None:
    client(fake).push_referrer("app", referrer("b"), OCI_MANIFEST)
    fake.clobber = 2  # our write is undone twice: two more rounds
    client(fake).push_referrer("app", referrer("a"), OCI_MANIFEST)
    assert [d["annotations"]["node"] for d in index_of(fake)] == ["b", "a"]
    assert fake.seen.count(f"PUT /v2/app/manifests/{TAG}") == 1 + 3


def test_an_index_that_never_keeps_ours_is_one_line(fake: Fake) -> None:
    fake.clobber = registry_module.TAG_SCHEMA_ATTEMPTS
    body = referrer("a")
    with pytest.raises(RegistryError) as caught:
        client(fake).push_referrer("app", body, OCI_MANIFEST)
    assert str(caught.value) == (
        f"127.0.0.1:{fake.port}/app:{TAG}: other clients kept rewriting the referrers index; "
        f"{digest_of(body)} was not in it after {registry_module.TAG_SCHEMA_ATTEMPTS} "
        "attempts"
    )


def test_referrers_follow_every_page_and_keep_the_type_asked_for(fake: Fake) -> None:
    fake.api, fake.page_size = True, 2
    fake.referrers = [{"digest": f"sha256:{n:064d}", "artifactType": OURS if n % 2 else "other"} for n in range(5)]
    assert [d["digest"] for d in client(fake).referrers("app", SUBJECT)] == [d["digest"] for d in fake.referrers]
    assert [d["digest"] for d in client(fake).referrers("app", SUBJECT, OURS)] == [
        f"sha256:{1:064d}",
        f"sha256:{3:064d}",
    ]
    assert fake.seen.count(f"GET /v2/app/referrers/{SUBJECT}") == 6  # three pages, twice


def test_no_api_and_no_index_is_no_referrers(fake: Fake) -> None:
    assert client(fake).referrers("app", SUBJECT) == []
    assert fake.seen == ["GET /v2/", f"GET /v2/app/referrers/{SUBJECT}", f"GET /v2/app/manifests/{TAG}"]


def test_a_referrer_must_name_its_subject() -> None:
    with pytest.raises(RegistryError, match="has no subject: not a referrer"):
        Registry("127.0.0.1:1", insecure=True).push_referrer("app", b'{"schemaVersion": 2}', OCI_MANIFEST)
