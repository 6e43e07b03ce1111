"""bench-image without a runtime: the phase clock, the config, the report's numbers, the convert plan."""

from __future__ import annotations

import stat
import time
from decimal import Decimal
from pathlib import Path

import pytest

from benchmarks.prefetch import config as cfg
from benchmarks.prefetch.convert import ConvertError, plan
from benchmarks.prefetch.report import run_rows, seconds, summarize, table
from benchmarks.prefetch.runner import Sample
from benchmarks.prefetch.timing import PhaseTimer
from benchmarks.prefetch.variants import find, skip_reason
from nri_optimizer.cli import main as cli


def bench_image(argv: list[str]) -> int:
    """`nri-optimizer bench-image ARGV`, as a user runs it."""
    return cli(["bench-image", *argv])


# --- the clock ------------------------------------------------------------------------------------------------


def test_phases_add_up_to_the_total_exactly() -> None:
    readings = iter([0, 1_250_000_000, 1_750_500_000, 4_500_999_999])  # ns
    timer = PhaseTimer(lambda: next(readings))
    assert [timer.lap("pull"), timer.lap("create"), timer.lap("run")] == [1_250_000, 500_500, 2_750_499]
    assert timer.total_us == 4_500_999  # 1.25 + 0.5005 + 2.750499: the fractions are counted once
    assert [seconds(us) for us in (1_250_000, 500_500, 2_750_499, 4_500_999)] == [
        "1.250000",
        "0.500500",
        "2.750499",
        "4.500999",
    ]


def test_sub_second_parts_are_not_counted_twice() -> None:
    # The seed's timer (total_seconds() + microseconds / 1e6) made a 0.3 s phase 0.6 s.
    timer = PhaseTimer()
    for name, pause in (("pull", 0.3), ("create", 0.2), ("run", 0.25)):
        time.sleep(pause)
        assert pause <= timer.lap(name) / 1e6 < pause + 0.1
    assert 0.75 <= timer.total_us / 1e6 < 0.95
    assert timer.total_us == sum(timer.phases.values())


# --- the config -----------------------------------------------------------------------------------------------

GOOD = """
registry: local
repetitions: 2
images:
  - name: web
    build: web
    arg: -e PORT=8081 --env=MODE=fast -e 'GREETING=hello world'
    ready: {url: "http://127.0.0.1:8081/"}
    timeout: 5
  - name: db:2
    archive: db.tar
    ready: {line: ready}
    list: lists/db
variants:
  - {name: oci, snapshotter: overlayfs}
  - {name: n, snapshotter: nydus, tag_suffix: _nydus, prefetch: off}
"""


def load(tmp_path: Path, text: str) -> cfg.BenchConfig:
    path = tmp_path / "bench.yaml"
    path.write_text(text)
    return cfg.load(path)


def test_a_config_in_the_seeds_shape(tmp_path: Path) -> None:
    config = load(tmp_path, GOOD)
    assert (config.registry, config.insecure, config.repetitions, config.links, config.settle) == (
        "local",
        True,
        2,
        (),
        20.0,
    )
    web, db = config.images
    assert web == cfg.Image(
        "web:latest",
        cfg.Ready("url", "http://127.0.0.1:8081/"),
        5.0,
        {"PORT": "8081", "MODE": "fast", "GREETING": "hello world"},
        build="web",
    )
    assert db == cfg.Image(
        "db:2", cfg.Ready("line", "ready"), 120.0, archive=tmp_path / "db.tar", list_file=tmp_path / "lists/db"
    )
    # a bare `off` is YAML 1.1's false: still prefetch off
    assert config.variants == (cfg.Variant("oci", "overlayfs"), cfg.Variant("n", "nydus", "_nydus", "off"))
    assert config.reference("127.0.0.1:5000", db, config.variants[1]) == "127.0.0.1:5000/db:2_nydus"


def test_default_variants_are_the_seeds_four_and_the_runtime_list(tmp_path: Path) -> None:
    config = load(tmp_path, "images: [{name: a:1, build: db, ready: start}]\n")
    assert [(v.name, v.tag_suffix, v.prefetch) for v in config.variants] == [
        ("oci", "", None),
        ("nydus", "_nydus", "off"),
        ("nydus-prefetch-all", "_nydus_prefetchall", "all"),
        ("nydus-prefetch-list", "_nydus_prefetch", "list"),
        ("nydus-runtime-list", "_nydus", "runtime"),
    ]
    # The runtime list runs the image converted without a list: the same tag as prefetch off.
    assert [(v.conversion, v.lists) for v in config.variants[1:]] == [
        (None, None),
        (None, None),
        (("ours", True, 256 << 10, "on-demand"), "ours"),  # convert's default unread budget
        (None, "ours"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "images: [{name: a:1, build: db}]",
            "images[0].ready: got None; expected {url: URL}, {line: TEXT}, exit or start",
        ),
        ("images: [{name: a:1, build: db, ready: {url: 'ftp://x'}}]", "images[0].ready: got {'url': 'ftp://x'}"),
        (
            "images: [{name: a:1, ready: exit}]",
            "images[0]: got 'a:1'; expected build: (web, db, wordpress, python-web, node-web) or archive:",
        ),
        (
            "registry: reg.example:5000\nimages: [{name: a:1, build: web, ready: exit}]",
            "images[0].build: got 'web'; expected only with registry: local",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit, arg: '-v /x:/y'}]",
            "images[0].arg: got '-v /x:/y'; expected only -e/--env KEY=VALUE options (not '-v')",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit, arg: '-e NOVALUE'}]",
            "expected KEY=VALUE after -e (not 'NOVALUE')",
        ),
        (
            "repetitions: 0\nimages: [{name: a:1, build: db, ready: exit}]",
            "repetitions: got 0; expected a whole number > 0, e.g. repetitions: 3",
        ),
        (
            "throttle: fast\nimages: [{name: a:1, build: db, ready: exit}]",
            "throttle: got 'fast'; expected RATE/RTT or a list of them, e.g. throttle: [100mbit/10ms, 20mbit/40ms], or no key",
        ),
        (
            "throttle: [20mbit/40ms, 20mbit/40ms]\nimages: [{name: a:1, build: db, ready: exit}]",
            "throttle: got ['20mbit/40ms', '20mbit/40ms']; expected each setting once",
        ),
        (
            "registry: reg.example\nthrottle: 20mbit/40ms\nimages: [{name: a:1, ready: exit}]",
            "throttle: got '20mbit/40ms'; expected only with registry: local",
        ),
        (
            "registry: reg.example\nimages: [{name: a:1, ready: exit, list: record}]",
            "images[0].list: got 'record'; expected a recorded list's path: `record` needs registry: local",
        ),
        ("settle: 0\nimages: [{name: a:1, build: db, ready: exit}]", "settle: got 0; expected a number > 0"),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: all, list: ours}]",
            "variants[0].list: got 'ours'; expected no list key: only prefetch list and runtime take a list",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: list, list: mine}]",
            "variants[0].list: got 'mine'; expected ours (the plugin's recorded list) or nydusd",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: runtime, reorder: false}]",
            "variants[0].reorder: got False; expected no reorder key: only prefetch list converts with a list",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: all, unread_budget: 0}]",
            "variants[0].unread_budget: got 0; expected no unread_budget key: only prefetch list and runtime take a list",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: list, unread_budget: lots}]",
            "variants[0].unread_budget: got 'lots'; expected a size (e.g. 256KiB, 1MiB, 0) or all (nri-optimizer convert)",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: off, nydusd: {threads_count: 8}}]",
            "variants[0].nydusd: got {'threads_count': 8}; expected no nydusd key: only nydus variants that prefetch",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: list, nydusd: {threads: 8}}]",
            "variants[0].nydusd.threads: unknown key; known: bandwidth_rate, merging_size, threads_count",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: all, nydusd: {merging_size: 1MiB}}]",
            "variants[0].nydusd.merging_size: got '1MiB'; expected a whole number >= 0 (bytes)",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: all, nydusd: {threads_count: 0}}]",
            "variants[0].nydusd.threads_count: got 0; expected a whole number > 0",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: all, nydusd: 8}]",
            "variants[0].nydusd: got 8; expected a mapping {threads_count, merging_size, bandwidth_rate} (nydusd's fs_prefetch)",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: list, read_in_part: first}]",
            "variants[0].read_in_part: got 'first'; expected on-demand (out of the prefetch table) or last (prefetched after the rest)",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, prefetch: list, reorder: 1}]",
            "variants[0].reorder: got 1; expected true (the listed files lead the blob) or false",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus, tag_suffix: _n, prefetch: off},"
            " {name: y, snapshotter: nydus, tag_suffix: _n, prefetch: list}]",
            "variants: got ['x', 'y']; expected tag suffixes of their own: their images differ, and '_n' can name one",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit, colour: red}]",
            "images[0].colour: unknown key; known: archive, arg, build, list, name, ready, timeout",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: overlayfs, prefetch: all}]",
            "variants[0].prefetch: got 'all'; expected no prefetch key: only nydus variants prefetch",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}]\nvariants: [{name: x, snapshotter: nydus}]",
            "variants[0].prefetch: got None; expected off, all, list or runtime",
        ),
        (
            "images: [{name: 'A:1', build: db, ready: exit}]",
            "images: got 'A:1'; expected names that make valid references",
        ),
        (
            "images: [{name: a:1, build: db, ready: exit}, {name: a:1, build: web, ready: exit}]",
            "images: got ['a:1', 'a:1']; expected each name once",
        ),
        ("images: [", "not valid YAML"),
    ],
)
def test_config_errors_are_one_line_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        load(tmp_path, text + "\n")
    assert str(caught.value).startswith(f"{tmp_path / 'bench.yaml'}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# --- the report -----------------------------------------------------------------------------------------------

OCI = cfg.Variant("oci", "overlayfs")
NYDUS = cfg.Variant("nydus", "nydus", "_nydus", "off")


def sample(rep: int, pull: int, create: int, run: int, status: str = "ok") -> Sample:
    return Sample("web:1", OCI, "r/web:1", rep, f"t{rep}", status, pull, create, run, pull + create + run, 1000)  # type: ignore[arg-type]


def test_summary_median_and_spread_and_exact_rows() -> None:
    samples = [
        sample(1, 300_001, 100_000, 50_000),
        sample(2, 100_000, 300_000, 70_000),
        sample(3, 200_000, 200_000, 60_000),
        Sample("web:1", NYDUS, "r/web:1_nydus", 0, "t4", "skipped", note="nydus not installed (x)"),
    ]
    (oci, nydus) = summarize(samples)
    assert (oci.status, oci.n, nydus.status, nydus.n) == ("ok", 3, "skipped", 0)
    assert {k: (v.median_us, v.min_us, v.max_us) for k, v in oci.times.items()} == {
        "pull": (200_000, 100_000, 300_001),
        "create": (200_000, 100_000, 300_000),
        "run": (60_000, 50_000, 70_000),
        "total": (460_000, 450_001, 470_000),
    }
    for row in run_rows(samples[:3], "r"):
        assert Decimal(row["total_s"]) == sum(Decimal(row[f"{p}_s"]) for p in ("pull", "create", "run"))
    lines = table([oci, nydus], {}).splitlines()
    assert lines[:4] == [
        "**web:1**, link not shaped: no bound",
        "",
        "| variant | n | pull (s) | create (s) | run (s) | total (s) | total / bound | fetched by ready "
        "| fetched in all | on-demand requests | stalled reads |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    assert lines[4] == (
        "| oci | 3/3 | 0.200 (0.100-0.300) | 0.200 (0.100-0.300) | 0.060 (0.050-0.070) | "
        "0.460 (0.450-0.470) |  | 1000 B |  |  |  |"
    )
    assert lines[5] == "| nydus | - | skipped: nydus not installed (x) |  |  |  |  |  |  |  |  |"


def test_a_partly_failed_variant_says_so() -> None:
    failed = Sample("web:1", OCI, "r/web:1", 2, "t2", "failed", note="not ready after 5 s: x did not happen")
    (summary,) = summarize([sample(1, 1, 1, 1), failed])
    assert (summary.status, summary.n, summary.note) == ("partial", 1, "not ready after 5 s: x did not happen")


# --- variants and convert ---------------------------------------------------------------------------------------


def fake_tools(directory: Path, *names: str) -> None:
    directory.mkdir(exist_ok=True)
    for name in names:
        tool = directory / name
        tool.write_text('#!/bin/sh\necho "$0 $*" >> "$(dirname "$0")/calls"; cat > /dev/null\n')
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def test_nydus_variants_say_why_they_are_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("NRI_OPTIMIZER_CACHE", str(tmp_path / "cache"))  # nothing from make nydus either
    config = load(tmp_path, "images: [{name: a:1, build: db, ready: exit}]\n")

    def reason(variant: cfg.Variant = NYDUS, *, local: bool = True) -> str | None:
        return skip_reason(variant, find(config), local=local)

    assert reason(OCI) is None
    assert reason() == "nydus not installed (containerd-nydus-grpc, nydusd not on PATH nor installed by make nydus)"
    fake_tools(tmp_path / "bin", "nydusd")
    assert reason() == "nydus not installed (containerd-nydus-grpc not on PATH nor installed by make nydus)"
    fake_tools(tmp_path / "bin", "containerd-nydus-grpc")
    # registry: local has no nydus image until the harness converts one with nydus-image
    assert reason() == (
        "no nydus image to pull: registry: local gets its nydus images from nydus-image "
        f"(nydus-image is not installed (not on PATH, not in {tmp_path}/cache/tools/nydus-rs-2.2.0/bin); "
        "install nydus-rs 2.2.0 with `make nydus` (in a source checkout) or `cargo install --locked nydus-rs "
        "--version 2.2.0`)"
    )
    assert reason(local=False) is None  # a registry that holds the converted images already
    fake_tools(tmp_path / "bin", "nydus-image")
    assert reason() is None
    assert find(config).tools.snapshotter == tmp_path / "bin" / "containerd-nydus-grpc"
    assert find(config).nydus_image == tmp_path / "bin" / "nydus-image"


def test_nydus_tools_are_found_where_make_nydus_put_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("NRI_OPTIMIZER_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "tools" / "nydus-rs-2.2.0").mkdir(parents=True)
    fake_tools(tmp_path / "cache" / "tools" / "nydus-rs-2.2.0" / "bin", "nydusd", "nydus-image")
    fake_tools(tmp_path / "unpacked", "containerd-nydus-grpc")
    (tmp_path / "cache" / "nydus-snapshotter_sid.json").write_text(
        f'{{"version": "0.13.4-7", "path": "{tmp_path / "unpacked" / "containerd-nydus-grpc"}"}}'
    )
    found = find(load(tmp_path, "images: [{name: a:1, build: db, ready: exit}]\n"))
    assert (found.tools.snapshotter, found.tools.nydusd, found.nydus_image) == (
        tmp_path / "unpacked" / "containerd-nydus-grpc",
        tmp_path / "cache/tools/nydus-rs-2.2.0/bin/nydusd",
        tmp_path / "cache/tools/nydus-rs-2.2.0/bin/nydus-image",
    )
    assert skip_reason(NYDUS, found, local=True) is None


REMOTE = """
registry: src.example/team
insecure_registry: true
images:
  - {name: app:1, ready: exit, list: app.list}
"""


def test_convert_plan_converts_each_prefetch_mode_from_the_source_registry(tmp_path: Path) -> None:
    (tmp_path / "app.list").write_text("/bin/sh\n/etc/app.conf\n")
    conversions = plan(load(tmp_path, REMOTE), "127.0.0.1:5000", persist_dir="/none")
    convert = "nri-optimizer convert --source src.example/team/app:1 --target 127.0.0.1:5000/app:1"
    insecure = "--source-insecure --target-insecure"
    assert [c.printable() for c in conversions] == [
        f"{convert}_nydus --no-list {insecure}",
        f"{convert}_nydus_prefetchall --no-list {insecure}",
        f"{convert}_nydus_prefetch --list {tmp_path / 'app.list'} {insecure}",
    ]


def test_convert_plan_needs_the_recorded_list(tmp_path: Path) -> None:
    config = load(tmp_path, REMOTE.replace(", list: app.list", ""))
    with pytest.raises(ConvertError, match=r"^app:1: no recorded list at /results/team/app:1; record one"):
        plan(config, "127.0.0.1:5000", persist_dir="/results")


def test_convert_without_nydus_image_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "app.list").write_text("/bin/sh\n")
    (tmp_path / "bench.yaml").write_text(REMOTE)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("NRI_OPTIMIZER_CACHE", str(tmp_path / "cache"))
    assert bench_image(["convert", str(tmp_path / "bench.yaml")]) == 1
    assert capsys.readouterr().err == (
        f"nri-optimizer bench-image: nydus-image is not installed (not on PATH, not in {tmp_path}/cache/tools/"
        "nydus-rs-2.2.0/bin); install nydus-rs 2.2.0 with `make nydus` (in a source checkout) or `cargo install "
        "--locked nydus-rs --version 2.2.0`\n"
    )


def test_convert_of_a_local_registry_needs_a_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bench.yaml").write_text("images: [{name: a:1, build: db, ready: exit}]\n")
    assert bench_image(["convert", str(tmp_path / "bench.yaml")]) == 1
    assert capsys.readouterr().err.startswith(
        "nri-optimizer bench-image: registry: local lives only while `run` runs: give --target HOST[:PORT]"
    )
