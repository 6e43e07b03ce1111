"""bench-image's nydus side without a runtime: the exact configs given to nydus-snapshotter, nydusd and containerd
for each prefetch mode, the tools' lookup and skip reasons, the CRI requests on a runtime handler, and reading
nydusd's bytes through (stand-in) unix-socket APIs."""

from __future__ import annotations

import json
import socketserver
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from benchmarks.prefetch import config as cfg
from benchmarks.prefetch.bench import handler_key, nydus_backend
from benchmarks.prefetch.handlers import RUNTIME_HANDLER_ANNOTATION, HandlerCri
from benchmarks.prefetch.report import run_rows, summarize, summary_rows, table
from benchmarks.prefetch.runner import Sample
from benchmarks.prefetch.variants import find, skip_reason
from nri_optimizer.cli import main as cli
from testbed import TestbedError, nydus
from testbed import config as ctd_config
from tests.benchmarks.test_prefetch_unit import load


def bench_image(argv: list[str]) -> int:
    """`nri-optimizer bench-image ARGV`, as a user runs it."""
    return cli(["bench-image", *argv])


LAYOUT = nydus.Layout(Path("/tmp/nriopt-nydus-list-x"))

SNAPSHOTTER_TOML = """\
version = 1
root = "/tmp/nriopt-nydus-list-x/root"
address = "/tmp/nriopt-nydus-list-x/grpc.sock"
daemon_mode = "dedicated"
cleanup_on_close = true

[system]
enable = true
address = "/tmp/nriopt-nydus-list-x/system.sock"

[daemon]
nydusd_path = "/opt/nydus/nydusd"
nydusd_config = "/tmp/nriopt-nydus-list-x/nydusd-config.json"
fs_driver = "fusedev"
recover_policy = "none"
threads_number = 0

[log]
log_to_stdout = true
level = "info"

[metrics]
address = ""

[remote]
convert_vpc_registry = false

[remote.mirrors_config]
dir = ""

[remote.auth]
enable_kubeconfig_keychain = false
enable_cri_keychain = false

[snapshot]
enable_nydus_overlayfs = false
sync_remove = true

[cache_manager]
disable = false
gc_period = "24h"
cache_dir = "/tmp/nriopt-nydus-list-x/cache"

[experimental]
enable_stargz = false
enable_referrer_detect = false
"""


def test_snapshotter_config_is_private_and_fusedev() -> None:
    assert nydus.snapshotter_config(LAYOUT, Path("/opt/nydus/nydusd")) == SNAPSHOTTER_TOML


@pytest.mark.parametrize(
    ("mode", "enable", "prefetch_all"), [("off", False, False), ("all", True, True), ("list", True, False)]
)
def test_nydusd_config_per_prefetch_mode(mode: nydus.PrefetchMode, enable: bool, prefetch_all: bool) -> None:
    settings = nydus.FsPrefetch(threads_count=8, merging_size=1 << 20, bandwidth_rate=5_000_000)
    assert nydus.nydusd_config(mode, nydus.Backend("http"), Path("/c"), prefetch=settings) == {
        "device": {
            "backend": {
                "type": "registry",
                "config": {"scheme": "http", "timeout": 30, "connect_timeout": 10, "retry_limit": 2},
            },
            "cache": {"type": "blobcache", "config": {"work_dir": "/c"}},
        },
        "mode": "direct",
        "digest_validate": False,
        "iostats_files": False,
        "enable_xattr": True,
        "fs_prefetch": {
            "enable": enable,
            "prefetch_all": prefetch_all,
            "threads_count": 8,
            "merging_size": 1048576,
            "bandwidth_rate": 5000000,
        },
    }


def test_nydusd_backend_follows_the_registry(tmp_path: Path) -> None:
    local = load(tmp_path, "images: [{name: a:1, build: db, ready: exit}]\n")
    insecure = load(tmp_path, "registry: r.example:5000\ninsecure_registry: true\nimages: [{name: a:1, ready: exit}]\n")
    secure = load(tmp_path, "registry: r.example\nimages: [{name: a:1, ready: exit}]\n")
    assert [nydus_backend(c) for c in (local, insecure, secure)] == [
        nydus.Backend("http"),
        nydus.Backend("https", skip_verify=True),
        nydus.Backend("https"),
    ]
    registry = nydus.nydusd_config("off", nydus_backend(insecure), Path("/c"))["device"]["backend"]["config"]
    assert (registry["scheme"], registry["skip_verify"]) == ("https", True)


def test_snapshotter_files_written_at_construction(tmp_path: Path) -> None:
    snapshotter = nydus.NydusSnapshotter(
        Path("/no/such/grpc"),
        Path("/opt/nydus/nydusd"),
        "all",
        nydus.Backend("http"),
        prefetch=nydus.FsPrefetch(threads_count=2),
    )
    try:
        assert snapshotter.name == "nydus-all-t2-m0k-b0k"  # not nydusd's settings by default: named by them
        assert snapshotter.dir.name.startswith("nriopt-nydus-all-") and snapshotter.dir.parent == Path("/tmp")
        expected = nydus.snapshotter_config(nydus.Layout(snapshotter.dir), snapshotter.dir / "nydusd")
        assert snapshotter.layout.config.read_text() == expected
        # The snapshotter runs nydusd through a wrapper that keeps nydusd from raising RLIMIT_NOFILE.
        assert (snapshotter.dir / "nydusd").read_text() == (
            '#!/bin/sh\nsubcommand="$1"\nshift\nexec /opt/nydus/nydusd "$subcommand" --rlimit-nofile 0 "$@"\n'
        )
        written = json.loads(snapshotter.layout.nydusd_config.read_text())
        assert written == nydus.nydusd_config(
            "all", nydus.Backend("http"), snapshotter.layout.cache, prefetch=nydus.FsPrefetch(threads_count=2)
        )
        with pytest.raises(TestbedError) as caught:
            snapshotter.start()
        assert str(caught.value) == "cannot run /no/such/grpc: No such file or directory"
    finally:
        snapshotter.close()
    assert not snapshotter.dir.exists()


# --- containerd's side ----------------------------------------------------------------------------------------

CTD2 = """
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  disable_snapshot_annotations = false
  discard_unpacked_layers = false
  use_local_image_pull = true
"""
CTD2_TAIL = """
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nydus-off]
  runtime_type = "io.containerd.runc.v2"
  snapshotter = "nydus-off"

[plugins.'io.containerd.cri.v1.images'.runtime_platforms.nydus-off]
  snapshotter = "nydus-off"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nydus-off.options]
  BinaryName = "/r/runc"
  Root = "/b/runc"
  SystemdCgroup = false

[proxy_plugins.nydus-off]
  type = "snapshot"
  address = "/s/off.sock"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nydus-list]
  runtime_type = "io.containerd.runc.v2"
  snapshotter = "nydus-list"

[plugins.'io.containerd.cri.v1.images'.runtime_platforms.nydus-list]
  snapshotter = "nydus-list"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.nydus-list.options]
  BinaryName = "/r/runc"
  Root = "/b/runc"
  SystemdCgroup = false

[proxy_plugins.nydus-list]
  type = "snapshot"
  address = "/s/list.sock"
"""
CTD17 = """
[plugins.'io.containerd.grpc.v1.cri'.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
  disable_snapshot_annotations = false
  discard_unpacked_layers = false
"""
CTD17_TAIL = """
[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.nydus-all]
  runtime_type = "io.containerd.runc.v2"
  snapshotter = "nydus-all"

[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.nydus-all.options]
  BinaryName = "/r/runc"
  Root = "/b/runc"
  SystemdCgroup = false

[proxy_plugins.nydus-all]
  type = "snapshot"
  address = "/s/all.sock"
"""


def render(major: int, snapshotters: dict[str, Path] | None) -> str:
    nri = ctd_config.Nri(False, Path("/n/sock"), Path("/n/p"), Path("/n/c"))
    return ctd_config.render(
        major,
        ctd_config.Layout(Path("/b")),
        nri=nri,
        sandbox_image="pause:1",
        runc=Path("/r/runc"),
        snapshotters=snapshotters,
    )


def test_containerd_2_gets_proxy_plugins_and_runtime_handlers() -> None:
    text = render(2, {"nydus-off": Path("/s/off.sock"), "nydus-list": Path("/s/list.sock")})
    assert CTD2 in text
    assert text.endswith(CTD2_TAIL)
    # Without snapshotters, nothing changes.
    plain = render(2, None)
    assert "proxy_plugins" not in plain and "disable_snapshot_annotations" not in plain
    assert plain == render(2, {})


def test_containerd_1_7_gets_proxy_plugins_and_runtime_handlers() -> None:
    text = render(1, {"nydus-all": Path("/s/all.sock")})
    assert CTD17 in text
    assert text.endswith(CTD17_TAIL)
    assert "use_local_image_pull" not in text  # 1.7's CRI has no transfer-service pull


# --- the tools and the skip reasons ---------------------------------------------------------------------------


def tool(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


NYDUS_LIST = cfg.Variant("nydus-prefetch-list", "nydus", "_nydus_prefetch", "list")


def test_tools_from_the_config_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("NRI_OPTIMIZER_CACHE", str(tmp_path / "cache"))
    grpc, nydusd = tool(tmp_path / "tools" / "grpc"), tool(tmp_path / "nydusd")
    config = load(
        tmp_path,
        f"images: [{{name: a:1, build: db, ready: exit}}]\n"
        f"nydus: {{snapshotter: tools/grpc, nydusd: {nydusd}, prefetch_threads: 2}}\n",
    )
    assert config.nydus == cfg.NydusTools(str(grpc), str(nydusd), None, 2)
    found = find(config)
    assert (found.tools.snapshotter, found.tools.nydusd, found.tools.missing) == (grpc, nydusd, None)
    assert skip_reason(NYDUS_LIST, found, local=False) is None
    assert skip_reason(NYDUS_LIST, found, local=True) == (
        "no nydus image to pull: registry: local gets its nydus images from nydus-image (nydus-image is not "
        f"installed (not on PATH, not in {tmp_path}/cache/tools/nydus-rs-2.2.0/bin); install nydus-rs 2.2.0 with "
        "`make nydus` (in a source checkout) or `cargo install --locked nydus-rs --version 2.2.0`)"
    )


def test_a_configured_path_that_is_not_a_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("NRI_OPTIMIZER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "plain").write_text("not executable\n")
    config = load(
        tmp_path,
        "images: [{name: a:1, build: db, ready: exit}]\nnydus: {nydusd: plain, nydus_image: /no/nydus-image}\n",
    )
    found = find(config)
    assert skip_reason(NYDUS_LIST, found, local=False) == (
        f"nydus not installed (containerd-nydus-grpc not on PATH nor installed by make nydus; nydusd: "
        f"{tmp_path / 'plain'} is not an executable file)"
    )
    assert found.nydus_image_problem == (
        "/no/nydus-image is not an executable; install nydus-rs 2.2.0 with "
        "`make nydus` (in a source checkout) or `cargo install --locked "
        "nydus-rs --version 2.2.0` or name another"
    )
    assert skip_reason(cfg.Variant("oci", "overlayfs"), found, local=True) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nydus: [x]", "nydus: got ['x']; expected a mapping {snapshotter, nydusd, nydus_image, prefetch_threads}"),
        ("nydus: {nydusd: 3}", "nydus.nydusd: got 3; expected the path of the executable, or no key (then: from PATH)"),
        (
            "nydus: {nydusd: /x, colour: red}",
            "nydus.colour: unknown key; known: nydus_image, nydusd, prefetch_threads, snapshotter",
        ),
        (
            "nydus: {prefetch_threads: 0}",
            "nydus.prefetch_threads: got 0; expected a whole number > 0, e.g. prefetch_threads: 4",
        ),
        ("nydus: {prefetch_threads: 2000}", "nydus.prefetch_threads: got 2000; expected at most 1024 (nydusd's limit)"),
    ],
)
def test_nydus_section_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        load(tmp_path, f"images: [{{name: a:1, build: db, ready: exit}}]\n{text}\n")
    assert str(caught.value) == f"{tmp_path / 'bench.yaml'}: {message}"


def test_flags_override_the_config_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.prefetch import command

    seen: list[cfg.BenchConfig] = []
    monkeypatch.setattr("benchmarks.prefetch.bench.bench", lambda config, *a, **k: seen.append(config) or 0)
    (tmp_path / "bench.yaml").write_text(
        "images: [{name: a:1, build: db, ready: exit}]\nnydus: {snapshotter: /cfg/grpc, nydusd: /cfg/nydusd}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert command.main(["run", "bench.yaml", "--nydusd", "bin/nydusd", "--nydus-image", "/x/nydus-image"]) == 0
    assert seen[0].nydus == cfg.NydusTools("/cfg/grpc", str(tmp_path / "bin/nydusd"), "/x/nydus-image", 4)


# --- CRI on a runtime handler ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self, response: Any) -> None:
        self.response = response
        self.requests: list[tuple[str, Any]] = []

    def __getattr__(self, method: str) -> Any:
        def call(request: Any, timeout: float) -> Any:
            self.requests.append((method, request))
            return self.response

        return call


def test_pods_and_pulls_name_the_handler() -> None:
    from cri_api.v1 import api_pb2 as pb

    cri = HandlerCri("/nonexistent.sock")
    try:
        cri._runtime = Recorder(pb.RunPodSandboxResponse(pod_sandbox_id="p1"))
        pod = cri.run_pod_on("nydus-list", "bench-1", cgroup_parent="/cg", log_directory="/logs")
        ((method, request),) = cri._runtime.requests
        assert (method, request.runtime_handler, pod.id) == ("RunPodSandbox", "nydus-list", "p1")
        assert dict(request.config.annotations) == {RUNTIME_HANDLER_ANNOTATION: "nydus-list"}
        assert (request.config.linux.cgroup_parent, request.config.log_directory) == ("/cg", "/logs")
        assert request.config.linux.security_context.namespace_options.network == pb.NODE
        assert request.config.hostname == ""

        cri._images = Recorder(pb.PullImageResponse(image_ref="sha256:1"))
        assert cri.pull_image_on("nydus-list", "r/a:1_nydus_prefetch") == "sha256:1"
        ((method, request),) = cri._images.requests
        assert (method, request.image.image, request.image.runtime_handler) == (
            "PullImage",
            "r/a:1_nydus_prefetch",
            "nydus-list",
        )
        assert dict(request.sandbox_config.annotations) == {RUNTIME_HANDLER_ANNOTATION: "nydus-list"}

        # The default handler sends what CriClient always sent.
        cri._images.requests.clear()
        cri.pull_image_on("", "r/a:1")
        ((_, request),) = cri._images.requests
        assert (request.image.runtime_handler, request.HasField("sandbox_config")) == ("", False)
    finally:
        cri.close()


# --- bytes fetched through nydusd's API -----------------------------------------------------------------------


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(path: Path, routes: dict[str, Any]) -> _UnixHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(routes[self.path]).encode() if self.path in routes else b"{}"
            self.send_response(200 if self.path in routes else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, *args: object) -> None:
            pass

    path.parent.mkdir(parents=True, exist_ok=True)
    server = _UnixHTTPServer(str(path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def snapshotter() -> Iterator[nydus.NydusSnapshotter]:
    s = nydus.NydusSnapshotter(Path("/unused"), Path("/unused"), "list", nydus.Backend("http"))
    yield s
    s.close()


def test_backend_bytes_of_the_daemons_serving_the_image(snapshotter: nydus.NydusSnapshotter) -> None:
    """The snapshotter's system controller lists daemons (its JSON shape: id, pid, instances by snapshot id);
    each nydusd answers /api/v1/metrics/backend on <root>/socket/<id>/api.sock."""
    daemons = [
        {"id": "d1", "pid": 10, "instances": {"7": {"snapshot_id": "7", "image_id": "127.0.0.1:5000/a:1_nydus"}}},
        {"id": "d2", "pid": 11, "instances": {"9": {"snapshot_id": "9", "image_id": "127.0.0.1:5000/b:1_nydus"}}},
    ]
    root = snapshotter.layout.root
    servers = [
        serve(snapshotter.layout.system_address, {"/api/v1/daemons": daemons}),
        serve(
            root / "socket" / "d1" / "api.sock",
            {
                "/api/v1/metrics/backend": {
                    "backend_type": "registry",
                    "read_count": 3,
                    "read_amount_total": 123456,
                    "read_errors": 0,
                }
            },
        ),
        serve(root / "socket" / "d2" / "api.sock", {"/api/v1/metrics/backend": {"read_amount_total": 7}}),
    ]
    try:
        assert snapshotter.backend_bytes("127.0.0.1:5000/a:1_nydus") == 123456
        assert snapshotter.backend_bytes("127.0.0.1:5000/b:1_nydus") == 7
        assert snapshotter.backend_bytes("127.0.0.1:5000/c:1_nydus") is None
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_daemon_api_error_is_said(snapshotter: nydus.NydusSnapshotter) -> None:
    daemons = [{"id": "d1", "pid": 10, "instances": {"7": {"image_id": "r/a:1"}}}]
    server = serve(snapshotter.layout.system_address, {"/api/v1/daemons": daemons})
    try:
        sock = snapshotter.layout.root / "socket" / "d1" / "api.sock"
        with pytest.raises(TestbedError) as caught:
            snapshotter.backend_bytes("r/a:1")
        assert str(caught.value) == f"GET /api/v1/metrics/backend on {sock}: [Errno 2] No such file or directory"
    finally:
        server.shutdown()
        server.server_close()


def test_clear_cache_empties_the_blob_cache(snapshotter: nydus.NydusSnapshotter) -> None:
    cache = snapshotter.layout.cache
    (cache / "blob1").write_bytes(b"x" * 10)
    (cache / "sub").mkdir()
    (cache / "sub" / "blob2.chunk_map").write_bytes(b"y")
    snapshotter.clear_cache()
    assert list(cache.iterdir()) == []


# --- the report's bytes ---------------------------------------------------------------------------------------

NYDUS_ALL = cfg.Variant("nydus-prefetch-all", "nydus", "_nydus_prefetchall", "all")


def test_nydus_bytes_in_rows_summary_and_table() -> None:
    def sample(rep: int, nydusd: int) -> Sample:
        return Sample(
            "web:1", NYDUS_ALL, "r/web:1_nydus_prefetchall", rep, f"t{rep}", "ok", 10, 20, 30, 60, 1000 + nydusd, nydusd
        )

    samples = [sample(1, 5000), sample(2, 9000), sample(3, 7000)]
    rows = run_rows(samples, "r")
    assert [(r["bytes_fetched"], r["nydusd_bytes"]) for r in rows] == [(6000, 5000), (10000, 9000), (8000, 7000)]
    (summary,) = summarize(samples)
    (row,) = summary_rows([summary], "r", {})
    assert (row["bytes_fetched"], row["nydusd_bytes"], row["prefetch"]) == (8000, 7000, "all")
    assert (
        table([summary], {})
        .splitlines()[4]
        .startswith(
            "| nydus-prefetch-all | 3/3 | 0.000 (0.000-0.000) | 0.000 (0.000-0.000) | 0.000 (0.000-0.000) | "
            "0.000 (0.000-0.000) |  | 7.8 KiB |"
        )
    )


def test_example_config_loads() -> None:
    example = Path(__file__).parents[2] / "examples" / "bench-image.yaml"
    config = cfg.load(example)
    assert [(v.name, v.prefetch) for v in config.variants] == [
        ("oci", None),
        ("nydus", "off"),
        ("nydus-prefetch-all", "all"),
        ("nydus-prefetch-list", "list"),
        ("nydus-runtime-list", "runtime"),
    ]


def test_variants_with_their_own_nydusd_settings_run_on_snapshotters_of_their_own(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "images: [{name: a:1, build: db, ready: exit}]\nvariants:\n"
        "  - {name: list, snapshotter: nydus, tag_suffix: _p, prefetch: list}\n"
        "  - {name: list-1m, snapshotter: nydus, tag_suffix: _p, prefetch: list, nydusd: {merging_size: 1048576}}\n"
        "  - {name: runtime, snapshotter: nydus, tag_suffix: _n, prefetch: runtime}\n"
        '  - {name: nothing, snapshotter: nydus, tag_suffix: _n, prefetch: "off"}\n',
    )
    one_mib = nydus.FsPrefetch(merging_size=1 << 20)
    assert [handler_key(v) for v in config.variants] == [
        ("list", None),
        ("list", one_mib),
        ("list", None),
        ("off", None),
    ]
    assert [nydus.snapshotter_name("list", settings=s.label()) for s in (nydus.FsPrefetch(), one_mib)] == [
        "nydus-list",
        "nydus-list-t4-m1024k-b0k",
    ]


@pytest.mark.parametrize(
    ("name", "variants"),
    [
        (
            "bench-image-apps.yaml",
            [
                "oci",
                "nydus",
                "nydus-prefetch-all",
                "nydus-prefetch-list",
                "nydus-runtime-list",
                "nydus-list-unordered",
                "nydus-nydusd-list",
            ],
        ),
        (
            "bench-image-policy.yaml",
            ["oci", "nydus", "nydus-prefetch-list", "nydus-list-every-file", "nydus-runtime-list"],
        ),
        (
            "bench-image-tuning.yaml",
            ["oci", "nydus", "nydus-prefetch-list", "list-partial-last", "list-t8-1m", "list-t8-4m", "list-t4-1m-2mbs"],
        ),
    ],
)
def test_the_app_configs_load(name: str, variants: list[str]) -> None:
    config = cfg.load(Path(__file__).parents[2] / "examples" / name)
    assert [image.name for image in config.images] == ["wordpress:1", "python-web:1", "node-web:1"]
    assert [v.name for v in config.variants] == variants
