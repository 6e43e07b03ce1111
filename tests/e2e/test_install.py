"""make install-optimizer into a DESTDIR: containerd runs the installed plugin and it traces a pod; make
uninstall-optimizer takes back exactly what install put there, leaving edited configs and results alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testbed.plugin import REGISTERED, PluginLog, config_text, install_prelaunched
from testbed.tracing import DATA_FILES, Traced, build_workload_image, shuffled

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = "opt/nri-optimizer/venv/bin/python"
PLUGIN = "opt/nri/plugins/02-optimizer-nri-plugin"
SERVER = "usr/local/bin/optimizer-server"
CONF = "etc/nri/conf.d/02-optimizer-nri-plugin.conf"
UNIT = "etc/systemd/system/nri-optimizer.service"
RESULTS = "opt/nri/optimizer/results"


def make(target: str, dest: Path) -> str:
    venv = Path(sys.prefix)
    # The installed venv is based on the interpreter this one was made from. pytest runs from VENV: -o keeps
    # make from reinstalling it underneath.
    result = subprocess.run(
        [
            "make",
            "-C",
            str(REPO),
            "-o",
            f"{venv}/.installed",
            target,
            f"DESTDIR={dest}",
            f"VENV={venv}",
            f"PYTHON={sys._base_executable}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"make {target} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


# The daemon's wheel and its runtime dependencies, and the [metrics] extra (imported only when metrics_address is
# set); nothing of the others (CRI, YAML, plots). pip is the venv's own.
DAEMON_DISTRIBUTIONS = ["cffi", "nri-optimizer", "prometheus-client", "protobuf", "pycparser"]


def installed_distributions(python: Path) -> list[str]:
    """The distributions python sees, by their normalized names (PEP 503: prometheus_client is prometheus-client)."""
    listing = subprocess.run(
        [
            python,
            "-I",
            "-c",
            "import importlib.metadata as m\n"
            "import re\n"
            "print(*sorted({re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in m.distributions()}), sep='\\n')",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return listing.stdout.split()


def tree(dest: Path) -> list[str]:
    return sorted(str(path.relative_to(dest)) for path in dest.rglob("*"))


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def test_installed_plugin_traces_a_pod_and_uninstall_keeps_only_results_and_the_edited_config(
    make_containerd, flavour, tmp_path, workload_image
) -> None:
    dest = tmp_path / "root"
    make("install-optimizer", dest)
    assert installed_distributions(dest / VENV_PYTHON) == DAEMON_DISTRIBUTIONS  # the daemon runs on exactly these
    conf = dest / CONF
    # The installed config is used as is (server_path and persist_dir name the installed copies), with a log.
    log = PluginLog(tmp_path / "plugin.log")
    conf.write_text(f'{conf.read_text()}log_file = "{log.path}"\n')
    bed = make_containerd(flavour, plugin_path=(dest / PLUGIN).parent, plugin_config_path=conf.parent)
    bed.ctd.import_image(workload_image)
    log.wait_for(REGISTERED)
    traced = Traced(bed, log, dest / RESULTS)
    order = shuffled(DATA_FILES, seed=3)[:40]
    traced.finish(traced.run(["/bin/cat", *order]))
    assert traced.result() == ["/bin/busybox", *order]

    bed.ctd.close()  # as on a real node: containerd and its plugin go before their files do
    out = make("uninstall-optimizer", dest)
    assert f"kept {conf}: changed since install" in out
    own = f"{RESULTS}/.workload:1"  # the result's own directory: the set its names point through
    assert [path for path in tree(dest) if not path.startswith(own)] == [
        "etc",
        "etc/nri",
        "etc/nri/conf.d",
        CONF,
        "opt",
        "opt/nri",
        "opt/nri/optimizer",
        RESULTS,
        f"{RESULTS}/workload:1",
        f"{RESULTS}/workload:1.csv",
        f"{RESULTS}/workload:1.json",
    ]
    assert (dest / own / "current").is_symlink()


def test_install_points_everything_at_the_venv_reinstalls_in_place_and_uninstall_leaves_nothing(tmp_path) -> None:
    dest = tmp_path / "root"
    out = make("install-optimizer", dest)
    assert f"{dest / UNIT} is not enabled" in out
    python = dest / VENV_PYTHON
    assert (dest / PLUGIN).read_text().splitlines()[0] == f"#!{python} -I"
    assert (dest / SERVER).read_text().splitlines()[0] == f"#!{python} -I"
    conf_lines = (dest / CONF).read_text().splitlines()
    assert f'server_path = "{dest / SERVER}"' in conf_lines
    assert f'persist_dir = "{dest / RESULTS}"' in conf_lines
    unit_lines = (dest / UNIT).read_text().splitlines()
    assert f"ExecStart={dest}/opt/nri-optimizer/venv/bin/nri-optimizer --config {dest / CONF}" in unit_lines
    # What containerd does: no PATH, no environment, no arguments beyond --help here.
    for launcher in (PLUGIN, SERVER):
        subprocess.run([dest / launcher, "--help"], env={}, check=True, capture_output=True)
    assert (dest / RESULTS).is_dir()

    installed = tree(dest)
    out = make("install-optimizer", dest)  # the config is still as installed: replaced, no .conf.new
    assert "kept" not in out
    assert tree(dest) == installed

    make("uninstall-optimizer", dest)
    assert not dest.exists()


def test_install_keeps_an_edited_config_and_puts_the_new_default_beside_it(tmp_path) -> None:
    dest = tmp_path / "root"
    conf = dest / CONF
    conf.parent.mkdir(parents=True)
    conf.write_text("timeout = 30\n")
    out = make("install-optimizer", dest)
    new = conf.with_name(f"{conf.name}.new")
    assert f"kept {conf}: it is not the config the last install wrote; compare it with {new}" in out
    assert conf.read_text() == "timeout = 30\n"
    assert f'server_path = "{dest / SERVER}"' in new.read_text().splitlines()

    make("install-optimizer", dest)
    assert conf.read_text() == "timeout = 30\n"

    out = make("uninstall-optimizer", dest)
    assert f"removed {new}" in out
    assert tree(dest) == ["etc", "etc/nri", "etc/nri/conf.d", CONF]
    assert conf.read_text() == "timeout = 30\n"


def test_the_daemon_wheel_without_extras_runs_as_containerd_plugin_and_traces_a_pod(
    make_containerd, flavour, tmp_path, workload_image
) -> None:
    """What the daemon's wheel needs is what it declares: installed alone (no extra) into a clean venv from the
    wheelhouse, with no index, it is containerd's pre-launched plugin and its server, and traces a pod exactly."""
    make("optimizer", tmp_path / "unused")
    venv = tmp_path / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", venv], check=True)
    python = venv / "bin/python"
    seeded = installed_distributions(python)  # what venv puts in (pip; setuptools before Python 3.12)
    subprocess.run(
        [
            venv / "bin/pip",
            "install",
            "--quiet",
            "--no-index",
            "--find-links",
            REPO / "build/wheelhouse",
            "nri-optimizer",
        ],
        check=True,
        capture_output=True,
    )
    assert installed_distributions(python) == sorted([*seeded, "cffi", "nri-optimizer", "protobuf", "pycparser"])

    log = PluginLog(tmp_path / "plugin.log")
    plugins, confs = install_prelaunched(
        tmp_path,
        config_text(log.path, tmp_path / "results", f'server_path = "{venv / "bin/optimizer-server"}"\n'),
        python=str(python),
    )
    bed = make_containerd(flavour, plugin_path=plugins, plugin_config_path=confs)
    bed.ctd.import_image(workload_image)
    log.wait_for(REGISTERED)
    traced = Traced(bed, log, tmp_path / "results")
    order = shuffled(DATA_FILES, seed=5)[:20]
    traced.finish(traced.run(["/bin/cat", *order]))
    assert traced.result() == ["/bin/busybox", *order]
