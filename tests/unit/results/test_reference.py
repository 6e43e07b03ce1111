import pytest

from nri_optimizer.results.reference import ReferenceError, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "result_dir", "result_name", "normalized"),
    [
        ("nginx", "library", "nginx:latest", "docker.io/library/nginx:latest"),
        ("docker.io/library/nginx:1.25", "library", "nginx:1.25", "docker.io/library/nginx:1.25"),
        ("sctb512/nginx:nydusv6", "sctb512", "nginx:nydusv6", "docker.io/sctb512/nginx:nydusv6"),
        ("localhost:5000/a/b/c:t", "a/b", "c:t", "localhost:5000/a/b/c:t"),
        ("registry.k8s.io/pause:3.10", "", "pause:3.10", "registry.k8s.io/pause:3.10"),
        (f"ghcr.io/x/y@{DIGEST}", "x", f"y@{DIGEST}", f"ghcr.io/x/y@{DIGEST}"),
        (f"ghcr.io/x/y:v1@{DIGEST}", "x", f"y@{DIGEST}", f"ghcr.io/x/y@{DIGEST}"),
        ("localhost/test/busybox:1", "test", "busybox:1", "localhost/test/busybox:1"),
    ],
)
def test_result_names_follow_upstream(text, result_dir, result_name, normalized):
    reference = parse(text)
    assert (reference.result_dir, reference.result_name, str(reference)) == (result_dir, result_name, normalized)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../etc/passwd:x",
        "a/../b",
        "a//b",
        "a/b\0c",
        "/abs",
        "a/./b",
        "UPPER",
        "a:tag with space",
        "x" * 300,
        "a:" + "t" * 129,
        "a/b:..",
        "a\nb",
    ],
)
def test_hostile_or_invalid_references_are_refused(text):
    with pytest.raises(ReferenceError):
        parse(text)
