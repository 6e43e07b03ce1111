"""Lists that follow the image, against real registries: Debian's docker-registry 2.8 (no referrers API: the tag
schema's index) and go-containerregistry's registry with the OCI 1.1 referrers API (testbed/go/referrers-registry).

Nodes are persist dirs; each pushes its result with ``nri-optimizer push-list`` as a user would, another pulls with
``pull-list`` and gets the exact merge; and the daemon's ``publish`` on a real containerd (2.1 and 1.7). Bad input — a foreign artifact, one of our type that is no list, a corrupt
blob, an unreachable registry — is one line on stderr and leaves every result as it was.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
import pytest

from nri_optimizer.oci import artifacts
from nri_optimizer.oci.registry import OCI_INDEX, OCI_MANIFEST, Registry, digest_of, referrers_tag
from nri_optimizer.results import reference, runs
from nri_optimizer.results.formats import Entry
from nri_optimizer.results.key import result_key
from testbed import TestbedError, toolchain
from testbed.images import build_image
from testbed.registry import LocalRegistry, ReferrersRegistry, push_layout, registry_binary
from testbed.tracing import result_set, start_traced, workload_files
from tests.e2e.test_metrics import scrape

KINDS = ["docker-registry", "referrers-api"]
IMAGE_FILES = {f"/app/{name}": f"{name}\n".encode() for name in "abcde"}
NODE_A = [Entry(b"/bin/busybox", 1000, 10), Entry(b"/app/a", 2, 20), Entry(b"/app/b", 2, 30), Entry(b"/app/c", 2, 40)]
NODE_B = [Entry(b"/bin/busybox", 1000, 14), Entry(b"/app/c", 2, 24), Entry(b"/app/b", 2, 34), Entry(b"/app/d", 2, 44)]
# merge's rule over [node-b, node-a] (pull gives the newest list first): busybox median rank 0; a 1 (node-a only);
# c ranks 1 and 3, b ranks 2 and 2: both median 2, both in two lists, and c comes first in node-b's, the first list;
# d 3. Sizes from the first list that has the file, elapsed the median (rounded down).
MERGED = ["/bin/busybox", "/app/a", "/app/c", "/app/b", "/app/d"]
MERGED_CSV = ["path,size,elapsed", "/bin/busybox,1000,12", "/app/a,2,20", "/app/c,2,32", "/app/b,2,32", "/app/d,2,44"]


@dataclass
class Bed:
    kind: str
    registry: LocalRegistry
    tmp: Path

    @property
    def address(self) -> str:
        return self.registry.address

    def image(self, repository: str = "app", tag: str = "v1", extra: dict[str, bytes] | None = None) -> str:
        """An image with IMAGE_FILES (and `extra`) pushed as repository:tag; its reference."""
        name = f"{self.address}/{repository}:{tag}"
        tarball = build_image(
            name, self.tmp / "images" / f"{repository}-{tag}.tar", IMAGE_FILES | (extra or {}), entrypoint=["/bin/sh"]
        )
        push_layout(tarball, self.client(), repository, tag)
        return name

    @property
    def docker_config(self) -> Path:
        """The Docker config the commands read (DOCKER_CONFIG): none unless a test writes one."""
        return self.tmp / "docker" / "config.json"

    def client(self) -> Registry:
        return self.registry.client(self.docker_config if self.docker_config.exists() else None)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if key != "NODE_NAME"}
        env["DOCKER_CONFIG"] = str(self.docker_config.parent)  # not root's own
        return subprocess.run(
            [sys.executable, "-m", "nri_optimizer", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    def node(self, name: str) -> Path:
        return self.tmp / name

    def record(self, node: str, image: str, entries: list[Entry], incomplete: str | None = None) -> Path:
        """What the daemon leaves on `node` after tracing `image`."""
        key = result_key(reference.parse(image))
        return Path(
            runs.record(
                str(self.node(node)), key, entries, readable=False, on_repeat="replace", window=1, incomplete=incomplete
            ).path
        )

    def push(self, node: str, image: str) -> str:
        done = self.cli("push-list", image, "--insecure", "--node", node, "--persist-dir", str(self.node(node)))
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def pull(self, node: str, image: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.cli("pull-list", image, "--insecure", "--persist-dir", str(self.node(node)), *args)

    def get(self, path: str, accept: str = OCI_INDEX) -> tuple[int, bytes]:
        request = urllib.request.Request(f"http://{self.address}{path}", headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


@pytest.fixture(params=KINDS)
def bed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bed]:
    try:
        registry = (
            LocalRegistry(registry_binary())
            if request.param == "docker-registry"
            else ReferrersRegistry(toolchain.referrers_registry().paths[0])
        )
    except TestbedError as error:
        pytest.fail(f"cannot get the {request.param} registry: {error}")
    with registry:
        yield Bed(request.param, registry, tmp_path)


def subject_of(bed: Bed, image: str) -> artifacts.Subject:
    ref = reference.parse(image)
    return artifacts.resolve(bed.registry.client(), ref.path, ref.tag)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under a persist dir (links read through), by relative path."""
    return {
        str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()
    }


def one_line_error(done: subprocess.CompletedProcess[str], command: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nri-optimizer {command}: "), done.stderr
    return lines[0].removeprefix(f"nri-optimizer {command}: ")


def test_two_nodes_lists_pulled_and_merged_exactly(bed: Bed) -> None:
    image = bed.image()
    a_list = bed.record("node-a", image, NODE_A)
    bed.record("node-b", image, NODE_B)
    pushed_a = bed.push("node-a", image)
    pushed_b = bed.push("node-b", image)
    subject = subject_of(bed, image)
    assert pushed_a.startswith(f"{bed.address}/app@sha256:") and pushed_b != pushed_a

    # Each registry the way it can: the referrers API, or the tag schema's index.
    status, body = bed.get(f"/v2/app/referrers/{subject.digest}")
    status_tag, index = bed.get(f"/v2/app/manifests/{referrers_tag(subject.digest)}")
    if bed.kind == "referrers-api":
        assert status == 200 and status_tag == 404
        listed = json.loads(body)["manifests"]
    else:
        assert status == 404 and status_tag == 200
        listed = json.loads(index)["manifests"]
    assert sorted(d["digest"] for d in listed) == sorted(p.rpartition("@")[2] for p in (pushed_a, pushed_b))
    assert {d["artifactType"] for d in listed} == {artifacts.ARTIFACT_TYPE}
    assert {d["annotations"][artifacts.NODE] for d in listed} == {"node-a", "node-b"}

    # The artifact: the node's three files byte for byte, its subject the image's manifest, the annotations.
    manifest = json.loads(bed.registry.client().manifest("app", pushed_a.rpartition("@")[2]).body)
    assert manifest["artifactType"] == artifacts.ARTIFACT_TYPE
    assert manifest["subject"] == {
        "mediaType": OCI_MANIFEST,
        "digest": subject.digest,
        "size": len(subject.manifest.body),
    }
    local = {suffix: Path(f"{a_list}{suffix}").read_bytes() for suffix in ("", ".csv", ".json")}
    assert [
        (layer["mediaType"], layer["digest"], layer["annotations"][artifacts.TITLE]) for layer in manifest["layers"]
    ] == [
        (artifacts.PATHS_TYPE, digest_of(local[""]), "app:v1"),
        (artifacts.CSV_TYPE, digest_of(local[".csv"]), "app:v1.csv"),
        (artifacts.NYDUS_TYPE, digest_of(local[".json"]), "app:v1.json"),
    ]
    annotations = manifest["annotations"]
    assert {k: v for k, v in annotations.items() if k not in (artifacts.CREATED, artifacts.VERSION)} == {
        artifacts.NODE: "node-a",
        artifacts.FILES: "4",
        artifacts.INCOMPLETE: "false",
    }
    assert datetime.fromisoformat(annotations[artifacts.CREATED]).tzinfo == UTC
    assert annotations[artifacts.VERSION] == "0.1.0"

    done = bed.pull("node-c", image, "--merge")
    assert done.returncode == 0, done.stderr
    result = bed.node("node-c") / "app:v1"
    assert done.stdout == f"{result}\n"
    assert result_set(result) == MERGED
    assert Path(f"{result}.csv").read_text().splitlines() == MERGED_CSV
    assert done.stderr.splitlines()[-1] == (
        f"nri-optimizer pull-list: merged 2 nodes' lists of {subject}: 5 files in {result}"
    )

    # Without --merge: the newest list; with --node, that node's, exactly as it was pushed.
    done = bed.pull("node-c", image, "--node", "node-a", "-o", str(bed.tmp / "from-a"))
    assert done.returncode == 0, done.stderr
    assert {s: Path(f"{bed.tmp / 'from-a'}{s}").read_bytes() for s in ("", ".csv", ".json")} == local


def test_a_nodes_newer_list_replaces_its_older_one(bed: Bed) -> None:
    image = bed.image()
    bed.record("node-a", image, NODE_A)
    bed.record("node-b", image, NODE_B)
    first = bed.push("node-a", image)
    from_b = bed.push("node-b", image)
    again = bed.cli("push-list", image, "--insecure", "--node", "node-a", "--persist-dir", str(bed.node("node-a")))
    assert again.returncode == 0 and again.stdout.strip() == first
    assert again.stderr == (
        f"nri-optimizer push-list: {first} is node node-a's newest list of {image} there, and it "
        "is this list: nothing pushed\n"
    )
    bed.record("node-a", image, [Entry(b"/app/e", 2, 1), *NODE_A])
    newer = bed.push("node-a", image)
    assert newer != first
    subject = subject_of(bed, image)
    found = bed.registry.client().referrers("app", subject.digest, artifacts.ARTIFACT_TYPE)
    if bed.kind == "referrers-api":  # the registry keeps every artifact; pull reads each node's newest
        assert len(found) == 3
    else:  # the tag schema's index keeps one per node
        assert sorted(d["digest"] for d in found) == sorted(p.rpartition("@")[2] for p in (newer, from_b))
    done = bed.pull("node-c", image, "--merge")
    assert done.returncode == 0, done.stderr
    # node-a's newer list (the newest, first): e 0, busybox 1, a 2, b 3, c 4; node-b's: busybox 0, c 1, b 2, d 3.
    # Medians: e 0, busybox 0.5, a 2, b and c 2.5 (b first in node-a's), d 3.
    assert result_set(bed.node("node-c") / "app:v1") == [
        "/app/e",
        "/bin/busybox",
        "/app/a",
        "/app/b",
        "/app/c",
        "/app/d",
    ]
    older = " (1 older lists left alone)" if bed.kind == "referrers-api" else ""
    assert done.stderr.splitlines()[-1].endswith(f": 6 files in {bed.node('node-c') / 'app:v1'}{older}")


def test_referrers_of_other_types_are_left_alone(bed: Bed) -> None:
    image = bed.image()
    bed.record("node-a", image, NODE_A)
    bed.push("node-a", image)
    subject = subject_of(bed, image)
    push_foreign(bed.registry.client(), subject, "application/vnd.dev.sigstore.bundle.v0.3+json", b'{"sig": 1}')
    done = bed.pull("node-c", image, "--merge")
    assert done.returncode == 0, done.stderr
    assert result_set(bed.node("node-c") / "app:v1") == [e.path.decode() for e in NODE_A]
    assert done.stderr.splitlines()[-1].endswith("(1 referrers of other types left alone)")


def push_foreign(
    client: Registry,
    subject: artifacts.Subject,
    artifact_type: str,
    content: bytes,
    layer_type: str = "application/octet-stream",
    annotations: dict[str, str] | None = None,
    subject_digest: str | None = None,
) -> str:
    """A referrer of `subject` that push-list did not make (its config of the artifact's type, as ours: so that
    go-containerregistry's registry, which reports a referrer's type from its config, reports it)."""
    client.push_blob("app", digest_of(content), content)
    client.push_blob("app", digest_of(b"{}"), b"{}")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": artifact_type, "digest": digest_of(b"{}"), "size": 2},
        "layers": [{"mediaType": layer_type, "digest": digest_of(content), "size": len(content)}],
        "subject": {
            "mediaType": OCI_MANIFEST,
            "digest": subject_digest or subject.digest,
            "size": len(subject.manifest.body),
        },
        "annotations": annotations or {},
    }
    return client.push_referrer("app", json.dumps(manifest).encode(), OCI_MANIFEST)


MALLORY = {artifacts.NODE: "mallory", artifacts.CREATED: "2030-01-01T00:00:00Z"}


@pytest.mark.parametrize("case", ["not-a-list", "not-utf8", "no-paths-layer", "corrupt-blob"])
def test_bad_input_is_one_line_and_overwrites_nothing(bed: Bed, case: str) -> None:
    image = bed.image()
    a_list = bed.record("node-a", image, NODE_A)
    pushed = bed.push("node-a", image)
    assert bed.pull("node-c", image, "--merge").returncode == 0
    before = {node: snapshot(bed.node(node)) for node in ("node-a", "node-c")}
    subject = subject_of(bed, image)
    client = bed.registry.client()
    if case == "not-a-list":
        bad = push_foreign(
            client,
            subject,
            artifacts.ARTIFACT_TYPE,
            b"/etc/passwd\nrm -rf /\n",
            layer_type=artifacts.PATHS_TYPE,
            annotations=MALLORY,
        )
        expected = f"{bed.address}/app@{bad}: line 2 is not an absolute path: not a list"
    elif case == "not-utf8":
        bad = push_foreign(
            client,
            subject,
            artifacts.ARTIFACT_TYPE,
            b"/bin/\xff\n",
            layer_type=artifacts.PATHS_TYPE,
            annotations=MALLORY,
        )
        expected = f"{bed.address}/app@{bad}: not UTF-8 text: not a list"
    elif case == "no-paths-layer":
        bad = push_foreign(
            client,
            subject,
            artifacts.ARTIFACT_TYPE,
            b"path,size,elapsed\n",
            layer_type=artifacts.CSV_TYPE,
            annotations=MALLORY,
        )
        expected = f"{bed.address}/app@{bad}: no {artifacts.PATHS_TYPE} layer: not a list"
    else:
        blob = digest_of(Path(a_list).read_bytes())
        stored = bed.registry.blob_file(blob)
        stored.write_bytes(stored.read_bytes().replace(b"/app/a", b"/app/x"))
        expected = (
            f"{bed.address}/v2/app/blobs/{blob}: the content does not match its digest"
            if bed.kind == "docker-registry"
            # it checks a blob's digest before it serves it
            else f"GET http://{bed.address}/v2/app/blobs/{blob}: HTTP 404 BLOB_UNKNOWN: Unknown blob"
        )
    assert one_line_error(bed.pull("node-c", image, "--merge"), "pull-list") == expected
    assert {node: snapshot(bed.node(node)) for node in ("node-a", "node-c")} == before
    assert pushed  # node-a's own list stays where it was, as pushed


# The referrers API lists what names the subject; only a tag-schema index can list anything.
@pytest.mark.parametrize("bed", ["docker-registry"], indirect=True)
def test_a_fallback_index_entry_of_another_subject_is_refused(bed: Bed) -> None:
    image = bed.image()
    other = bed.image(tag="v2", extra={"/app/v2": b"another image\n"})
    bed.record("node-a", image, NODE_A)
    bed.push("node-a", image)
    subject, elsewhere = subject_of(bed, image), subject_of(bed, other)
    client = bed.registry.client()
    stray = push_foreign(
        client, elsewhere, artifacts.ARTIFACT_TYPE, b"/app/a\n", layer_type=artifacts.PATHS_TYPE, annotations=MALLORY
    )
    index = json.loads(client.manifest("app", referrers_tag(subject.digest)).body)
    (entry,) = json.loads(client.manifest("app", referrers_tag(elsewhere.digest)).body)["manifests"]
    index["manifests"].append(entry)
    client.push_manifest("app", referrers_tag(subject.digest), json.dumps(index).encode(), index["mediaType"])
    done = bed.pull("node-c", image, "--merge")
    assert one_line_error(done, "pull-list") == (
        f"{bed.address}/app@{stray}: listed as a referrer of {subject.digest} but its subject is {elsewhere.digest}"
    )
    assert not bed.node("node-c").exists()


def test_an_unreachable_registry_is_one_line_and_keeps_the_lists(bed: Bed) -> None:
    image = bed.image()
    bed.record("node-a", image, NODE_A)
    bed.push("node-a", image)
    assert bed.pull("node-c", image, "--merge").returncode == 0
    before = {node: snapshot(bed.node(node)) for node in ("node-a", "node-c")}
    bed.registry.close()
    for done, command in (
        (
            bed.cli("push-list", image, "--insecure", "--node", "node-a", "--persist-dir", str(bed.node("node-a"))),
            "push-list",
        ),
        (bed.pull("node-c", image, "--merge"), "pull-list"),
    ):
        message = one_line_error(done, command)
        assert message.startswith(f"cannot reach registry {bed.address}: "), message
        assert "Connection refused" in message, message
    assert {node: snapshot(bed.node(node)) for node in ("node-a", "node-c")} == before


def test_credentials_come_from_the_docker_config(tmp_path: Path) -> None:
    """docker-registry asking for Basic credentials (htpasswd): push-list and pull-list send those of the Docker config
    in DOCKER_CONFIG; without them, or with a wrong password, the registry's refusal is one line."""
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    with LocalRegistry(registry_binary(), htpasswd=f"alice:{hashed}\n") as registry:
        bed = Bed("docker-registry", registry, tmp_path)

        def use(password: str) -> None:
            bed.docker_config.parent.mkdir(exist_ok=True)
            auth = base64.b64encode(f"alice:{password}".encode()).decode()
            bed.docker_config.write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))

        use("secret")
        image = bed.image()
        bed.record("node-a", image, NODE_A)
        bed.push("node-a", image)
        done = bed.pull("node-c", image, "--merge")
        assert done.returncode == 0, done.stderr
        assert result_set(bed.node("node-c") / "app:v1") == [e.path.decode() for e in NODE_A]
        before = snapshot(bed.node("node-c"))
        use("wrong")
        refusal = f"GET http://{registry.address}/v2/app/manifests/v1: HTTP 401 UNAUTHORIZED: authentication required"
        assert one_line_error(bed.pull("node-c", image, "--merge"), "pull-list") == refusal
        bed.docker_config.unlink()
        assert one_line_error(bed.pull("node-c", image, "--merge"), "pull-list") == refusal
        assert snapshot(bed.node("node-c")) == before


def test_what_is_missing_is_said_in_one_line(bed: Bed) -> None:
    image = bed.image()
    done = bed.cli("push-list", image, "--insecure", "--persist-dir", str(bed.node("node-a")))
    assert done.returncode == 2
    assert done.stderr == (
        f"nri-optimizer push-list: no recorded list at {bed.node('node-a') / 'app:v1'}; record one "
        "first (nri-optimizer profile IMAGE) or pass --list\n"
    )
    subject = subject_of(bed, image)
    assert one_line_error(bed.pull("node-c", image), "pull-list") == (
        f"no list is attached to {subject} (nodes attach theirs with nri-optimizer push-list, or the daemon's publish)"
    )
    absent = bed.pull("node-c", f"{bed.address}/nothing:here")
    assert one_line_error(absent, "pull-list").startswith(
        f"GET http://{bed.address}/v2/nothing/manifests/here: HTTP 404 "
    )
    assert not bed.node("node-c").exists()


def test_concurrent_pushes_of_many_nodes_all_land(bed: Bed) -> None:
    """The tag schema has no atomic update: each push reads its index back and adds itself again if another's write
    dropped it."""
    image = bed.image()
    subject = subject_of(bed, image)
    nodes = [f"node-{n}" for n in range(6)]
    barrier = threading.Barrier(len(nodes))
    failures: list[BaseException] = []

    def push(node: str) -> None:
        try:
            mine = artifacts.Subject(bed.registry.client(), "app", subject.manifest)
            files = artifacts.ListFiles(f"/app/a\n/{node}\n".encode())
            barrier.wait()
            artifacts.push_list(mine, files, name="app:v1", node=node)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=push, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    pulled = artifacts.pull_lists(subject)
    assert sorted(remote.node for remote in pulled.lists) == nodes


def test_convert_from_registry_builds_with_the_merged_list(bed: Bed) -> None:
    try:
        nydus_image = toolchain.nydus_rs().bin_dir / "nydus-image"
    except TestbedError as error:
        pytest.fail(f"cannot get nydus-image: {error}")
    image = bed.image()
    bed.record("node-a", image, NODE_A)
    bed.record("node-b", image, NODE_B)
    bed.push("node-a", image)
    bed.push("node-b", image)
    done = bed.cli(
        "convert",
        "--source",
        image,
        "--target",
        f"{bed.address}/app:v1-nydus",
        "--from-registry",
        "--source-insecure",
        "--target-insecure",
        "--persist-dir",
        str(bed.node("builder")),
        "--nydus-image",
        str(nydus_image),
        "--work-dir",
        str(bed.tmp),
    )
    assert done.returncode == 0, done.stderr
    assert result_set(bed.node("builder") / "app:v1") == MERGED
    assert "prefetch table of 5 files" in done.stderr, done.stderr
    assert done.stdout.startswith(f"{bed.address}/app@sha256:")


# --- the daemon's publish, on a real containerd ---------------------------------------------------------------------


def test_the_daemon_publishes_its_lists_and_a_registry_outage_costs_nothing(
    make_containerd, flavour: str, tmp_path: Path
) -> None:
    """publish on: a traced container's list lands beside its image, exactly as written; with the registry gone, the
    next list is written all the same, its publish tried publish_attempts times in the background and given up,
    and containers start as before meanwhile. The metrics say so."""
    registry = LocalRegistry(registry_binary())
    with registry:
        first, second = f"{registry.address}/workload:1", f"{registry.address}/workload:2"
        # Two images, not one under two names: CRI would name a container of either by the first.
        tarballs = {
            image: build_image(
                image,
                tmp_path / f"{image.rpartition(':')[2]}.tar",
                workload_files() | {"/version": image.encode()},
                entrypoint=["/bin/sh"],
            )
            for image in (first, second)
        }
        push_layout(tarballs[first], registry.client(), "workload", "1")
        metrics = tmp_path / "metrics.sock"
        traced = start_traced(
            make_containerd,
            flavour,
            tmp_path,
            tarballs[first],
            extra=(
                f'publish = ["{registry.address}/*"]\npublish_insecure = ["{registry.address}"]\npublish_attempts = 2\n'
                f'metrics_address = "{metrics}"\n'
            ),
        )
        traced.bed.ctd.import_image(tarballs[second])

        run = traced.run(["/bin/cat", "/data/f001", "/data/f002"], image=first)
        assert "recorded 3 files" in traced.finish(run)
        (published,) = traced.log.wait_for(
            rf"{run.container_id} published the list of {re.escape(first)}: pushed ", timeout=60
        )
        local = traced.result_path(first)
        assert result_set(local) == ["/bin/busybox", "/data/f001", "/data/f002"]
        pulled = tmp_path / "pulled"
        done = subprocess.run(
            [sys.executable, "-m", "nri_optimizer", "pull-list", first, "--insecure", "-o", str(pulled)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        for suffix in ("", ".csv", ".json"):
            assert Path(f"{pulled}{suffix}").read_bytes() == Path(f"{local}{suffix}").read_bytes()
        subject = artifacts.resolve(registry.client(), "workload", "1")
        (listed,) = registry.client().referrers("workload", subject.digest, artifacts.ARTIFACT_TYPE)
        node = os.environ.get("NODE_NAME") or socket.gethostname()
        assert listed["annotations"][artifacts.NODE] == node
        assert published.endswith(
            f"pushed {local} from node {node} as {registry.address}/workload@{listed['digest']}"
            f", a referrer of {subject}"
        ), published

    # The registry is gone (closed above): the next list is written, and its publish given up after two tries.
    run = traced.run(["/bin/cat", "/data/f003"], image=second)
    assert "recorded 2 files" in traced.finish(run)
    assert result_set(traced.result_path(second)) == ["/bin/busybox", "/data/f003"]
    (retry,) = traced.log.wait_for(
        rf"{run.container_id} publishing the list of {re.escape(second)} failed \(try 1 of "
        r"2\): cannot reach registry ",
        timeout=30,
    )
    assert retry.endswith("; trying again in 2 s"), retry
    began = time.monotonic()
    meanwhile = traced.run(["echo", "started"], image=first)  # while the publish waits to try again
    assert meanwhile.log_lines() == ["started"] and time.monotonic() - began < 5
    (gave_up,) = traced.log.wait_for(
        rf"{run.container_id} gave up publishing the list of {re.escape(second)} after "
        "2 tries: cannot reach registry ",
        timeout=30,
    )
    assert gave_up.endswith(
        f"; it stays in {traced.result_path(second)} (nri-optimizer push-list {second} --list "
        f"{traced.result_path(second)} publishes it)"
    ), gave_up
    assert result_set(traced.result_path(second)) == ["/bin/busybox", "/data/f003"]
    counted = scrape(str(metrics))
    assert counted["nri_optimizer_lists_published_total"] == 1
    assert counted["nri_optimizer_list_publish_retries_total"] == 1
    assert counted['nri_optimizer_list_publish_failures_total{reason="attempts"}'] == 1
