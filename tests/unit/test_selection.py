"""The selection rules (nri_optimizer/selection.py): which containers are traced, and the reason given when not."""

from __future__ import annotations

import pytest

from nri_optimizer import config as cfg
from nri_optimizer.selection import Selection, pattern_problem

IMAGE = "docker.io/library/nginx:latest"
POD = "trace.nri-optimizer.io/pod"
WEB = "trace.nri-optimizer.io/container.web"


def skip(
    selection: Selection,
    annotations: dict[str, str] | None = None,
    *,
    namespace: str = "default",
    container: str = "web",
    image: str = IMAGE,
) -> tuple[str, str] | None:
    found = selection.skip(namespace, annotations or {}, container, image)
    return None if found is None else (found.rule, found.message)


def test_mode_all_traces_every_container_without_rules():
    assert skip(Selection()) is None


@pytest.mark.parametrize("value", ["false", "False", "no", "0", " false "])
def test_the_pod_annotation_false_opts_every_container_out(value):
    assert skip(Selection(), {POD: value}) == ("annotation", f"annotation {POD} = {value!r}")


def test_the_container_annotation_overrides_the_pod_one_both_ways():
    assert skip(Selection(), {POD: "false", WEB: "true"}) is None
    assert skip(Selection(), {POD: "true", WEB: "false"}) == ("annotation", f"annotation {WEB} = 'false'")
    # Another container's key says nothing about this one.
    assert skip(Selection(), {"trace.nri-optimizer.io/container.sidecar": "false"}) is None


def test_an_annotation_that_is_not_a_boolean_is_not_traced_and_says_why():
    assert skip(Selection(), {POD: "maybe"}) == ("annotation", f'annotation {POD} = \'maybe\' is not "true" or "false"')


def test_opt_in_traces_only_annotated_pods_or_containers():
    opt_in = Selection("opt-in")
    assert skip(opt_in) == ("opt-in", f'mode = "opt-in" and the pod has neither {WEB} nor {POD} = "true"')
    assert skip(opt_in, {POD: "true"}) is None
    assert skip(opt_in, {WEB: "true"}) is None
    assert skip(opt_in, {WEB: "true"}, container="sidecar")[0] == "opt-in"


def test_namespace_include_and_exclude():
    rules = Selection(namespace_include=["team-*", "default"], namespace_exclude=["team-secret"])
    assert skip(rules, namespace="team-a") is None
    assert skip(rules, namespace="default") is None
    assert skip(rules, namespace="kube-system") == (
        "namespace",
        "namespace kube-system matches no namespace_include pattern",
    )
    assert skip(rules, namespace="team-secret") == ("namespace", "namespace team-secret matches namespace_exclude")


def test_image_patterns_match_the_whole_normalised_name_and_star_crosses_slashes():
    rules = Selection(image_include=["docker.io/library/*"], image_exclude=["*:debug", "*@sha256:*"])
    assert skip(rules) is None
    assert skip(rules, image="docker.io/library/nginx:debug") == (
        "image",
        "image docker.io/library/nginx:debug matches image_exclude",
    )
    assert skip(rules, image="quay.io/org/app:1") == (
        "image",
        "image quay.io/org/app:1 matches no image_include pattern",
    )
    assert skip(Selection(image_include=["nginx:*"])) == (
        "image",
        f"image {IMAGE} matches no image_include pattern",
    )  # the whole name, not a suffix


def test_the_operators_limits_win_over_a_pods_annotation():
    rules = Selection("opt-in", namespace_exclude=["kube-*"], image_exclude=["registry.k8s.io/*"])
    assert skip(rules, {POD: "true"}, namespace="kube-system")[0] == "namespace"
    assert skip(rules, {POD: "true"}, image="registry.k8s.io/pause:3.10")[0] == "image"
    # ...but a pod can always opt out, and says so first.
    assert skip(rules, {POD: "false"}, namespace="kube-system")[0] == "annotation"


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("", "an empty pattern matches nothing"),
        ("team a", "pattern 'team a' contains white space, which no name has"),
        ("team-[ab", "pattern 'team-[ab' has a '[' without its ']'"),
        ("x[]", "pattern 'x[]' has a '[' without its ']'"),
        ("x[!]", "pattern 'x[!]' has a '[' without its ']'"),
    ],
)
def test_patterns_that_can_never_match_are_refused(pattern, problem):
    assert pattern_problem(pattern) == problem


@pytest.mark.parametrize("pattern", ["*", "team-[ab]", "x[]]", "x[!]]", "a?c", "[[]x"])
def test_usable_patterns_pass(pattern):
    assert pattern_problem(pattern) is None


def test_set_members_as_fnmatch_reads_them():
    assert Selection(namespace_include=["x[]]"]).skip("x]", {}, "c", IMAGE) is None


def test_config_keys_and_their_one_line_errors():
    text = 'mode = "opt-in"\nnamespace_exclude = ["kube-*"]\nimage_include = ["docker.io/*"]\n'
    config = cfg.build(cfg.parse_toml(text, "F"), {})
    assert (config.mode, config.namespace_exclude, config.image_include) == ("opt-in", ("kube-*",), ("docker.io/*",))
    with pytest.raises(cfg.ConfigError) as bad:
        cfg.parse_toml('image_exclude = ["docker.io/[abc"]', "F")
    assert str(bad.value) == (
        "F: image_exclude: pattern 'docker.io/[abc' has a '[' without its ']'; expected a list "
        'of image name patterns, e.g. image_exclude = ["registry.k8s.io/pause:*"]'
    )
    with pytest.raises(cfg.ConfigError) as bad:
        cfg.parse_toml('mode = "some"', "F")
    assert str(bad.value) == (
        "F: mode: got 'some' (string); expected one of \"all\" (trace every container) or "
        '"opt-in" (only pods annotated trace.nri-optimizer.io/pod = "true"), e.g. mode = "all"'
    )
    with pytest.raises(cfg.ConfigError) as bad:
        cfg.check_flag("namespace_include", ["ok", ""])
    assert str(bad.value).startswith("--namespace-include: an empty pattern matches nothing; expected")


@pytest.mark.parametrize(
    "address", ["", "/run/nri-optimizer/metrics.sock", "127.0.0.1:9464", "[::1]:9464", "0.0.0.0:9464"]
)
def test_metrics_addresses_accepted(address):
    assert cfg.metrics_address_problem(address) is None


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("metrics.sock", "not an absolute path and no :PORT between 1 and 65535"),
        ("127.0.0.1:0", "not an absolute path and no :PORT between 1 and 65535"),
        ("127.0.0.1:70000", "not an absolute path and no :PORT between 1 and 65535"),
        ("localhost:9464", "'localhost' is not an IP address"),
    ],
)
def test_metrics_addresses_refused(address, problem):
    assert cfg.metrics_address_problem(address) == problem


def test_the_same_keys_as_flags(tmp_path):
    from nri_optimizer.cli.daemon import daemon_parser

    config_file = tmp_path / "plugin.conf"
    config_file.write_text('mode = "all"\nimage_exclude = ["x/*"]\n')
    argv = [
        "--config",
        str(config_file),
        "--mode",
        "opt-in",
        "--namespace-include",
        "team-*,default",
        "--image-exclude",
        "registry.k8s.io/*",
        "--metrics-address",
        "127.0.0.1:9464",
        "--stall-timeout",
        "5",
    ]
    config = cfg.load_config(vars(daemon_parser().parse_args(argv)))
    assert (
        config.mode,
        config.namespace_include,
        config.image_exclude,
        config.metrics_address,
        config.stall_timeout,
    ) == ("opt-in", ("team-*", "default"), ("registry.k8s.io/*",), "127.0.0.1:9464", 5)
    with pytest.raises(cfg.ConfigError) as bad:
        cfg.load_config(vars(daemon_parser().parse_args(["--config", str(config_file), "--image-include", "a[b"])))
    assert str(bad.value) == (
        "--image-include: pattern 'a[b' has a '[' without its ']'; expected a list of image "
        'name patterns, e.g. image_include = ["registry.example/apps/*"]'
    )
