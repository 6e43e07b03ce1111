"""The plugin daemon speaks NRI to real containerd 2.1 and 1.7, pre-launched and external."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.bed import MakeContainerd, Testbed
from testbed.images import BUSYBOX_IMAGE
from testbed.plugin import REGISTERED, ExternalPlugin, PluginLog, config_text, prelaunched_pid, start_prelaunched

START_LINE = r"INFO {cid} StartContainer name={name} pid=([0-9]+) image={image} pod=default/{name}$"
STOP_LINE = r"INFO {cid} StopContainer name={name} pid=[0-9]+ image={image} pod=default/{name}$"


def assert_start_and_stop_logged_once(log: PluginLog, bed: Testbed) -> None:
    run = bed.run_busybox(["sh", "-c", "echo hi"])
    bed.cri.stop_container(run.container_id)  # already exited: containerd still tells plugins it stopped
    name = run.pod.config.metadata.name
    fields = {"cid": run.container_id, "name": name, "image": re.escape(BUSYBOX_IMAGE)}
    (start,) = log.wait_for(START_LINE.format(**fields))
    log.wait_for(STOP_LINE.format(**fields))
    time.sleep(0.2)  # nothing more may follow for this container
    assert len(log.matching(rf"{run.container_id} StartContainer")) == 1
    assert len(log.matching(rf"{run.container_id} StopContainer")) == 1
    pid = int(re.search(START_LINE.format(**fields), start).group(1))
    assert pid > 0


@pytest.fixture
def external(make_containerd: MakeContainerd, flavour: str, tmp_path: Path) -> Iterator[tuple[Testbed, ExternalPlugin]]:
    bed = make_containerd(flavour)
    config = tmp_path / "plugin.conf"
    config.write_text(config_text(tmp_path / "plugin.log", tmp_path / "results"))
    plugin = ExternalPlugin(bed, config, tmp_path / "plugin.log")
    try:
        plugin.log.wait_for(REGISTERED)
        yield bed, plugin
    finally:
        plugin.close()


def test_prelaunched_plugin_registers_and_logs_one_start_and_one_stop(
    make_containerd: MakeContainerd, flavour: str, tmp_path: Path
) -> None:
    bed, log = start_prelaunched(make_containerd, flavour, tmp_path)
    assert log.matching(r"starting 02-optimizer-nri-plugin \(pre-launched mode")
    assert_start_and_stop_logged_once(log, bed)


def test_external_plugin_registers_and_logs_one_start_and_one_stop(external) -> None:
    bed, plugin = external
    assert_start_and_stop_logged_once(plugin.log, bed)


def test_external_plugin_registers_again_within_2s_of_a_containerd_restart(external) -> None:
    bed, plugin = external
    bed.ctd.stop()
    time.sleep(0.5)  # the plugin notices and keeps retrying
    bed.ctd.start()
    restarted = time.monotonic()
    plugin.log.wait_for(REGISTERED, count=2, timeout=2.0)
    assert time.monotonic() - restarted < 2.0
    assert_start_and_stop_logged_once(plugin.log, bed)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGSTOP], ids=["SIGKILL", "SIGSTOP"])
def test_pods_start_with_the_external_plugin_killed_or_stopped(external, signum: int) -> None:
    bed, plugin = external
    plugin.signal(signum)
    began = time.monotonic()
    run = bed.run_busybox(["echo", "still works"])
    assert run.status is not None and run.status.exit_code == 0
    assert run.log_lines() == ["still works"]
    # A stopped plugin costs at most containerd's request timeout (2 s), once: then it is dropped.
    assert time.monotonic() - began < 5
    again = bed.run_busybox(["echo", "again"])
    assert again.log_lines() == ["again"]


def test_a_stopped_external_plugin_comes_back_when_continued(external) -> None:
    bed, plugin = external
    plugin.signal(signal.SIGSTOP)
    bed.run_busybox(["true"])  # containerd times the plugin out and drops it
    plugin.signal(signal.SIGCONT)
    plugin.log.wait_for(REGISTERED, count=2, timeout=5)
    assert_start_and_stop_logged_once(plugin.log, bed)


def test_pods_start_with_the_prelaunched_plugin_killed(
    make_containerd: MakeContainerd, flavour: str, tmp_path: Path
) -> None:
    bed, _ = start_prelaunched(make_containerd, flavour, tmp_path)
    os.kill(prelaunched_pid(bed), signal.SIGKILL)
    run = bed.run_busybox(["echo", "fine"])
    assert run.log_lines() == ["fine"]


def test_prelaunched_bad_config_is_a_configure_error_and_pods_still_start(
    make_containerd: MakeContainerd, flavour: str, tmp_path: Path
) -> None:
    bed, log = start_prelaunched(make_containerd, flavour, tmp_path, 'timeout = "soon"\n', registered=False)
    message = (
        "Configure: timeout: got 'soon' (string); expected a whole number of seconds >= 0 "
        "(0 traces until the container stops), e.g. timeout = 0"
    )
    log.wait_for(re.escape(f"configuration rejected: {message}"))
    if flavour == "1.7":
        # containerd 1.7 would stop its CRI service on a Configure error: the plugin stays inert instead.
        log.wait_for("cannot survive a plugin's Configure error: staying registered but inert")
    else:
        deadline = time.monotonic() + 5
        while message not in bed.ctd.log_path.read_text():
            assert time.monotonic() < deadline, "containerd did not log the plugin's Configure error"
            time.sleep(0.05)
    run = bed.run_busybox(["echo", "unaffected"])
    assert run.log_lines() == ["unaffected"]
    assert not log.matching(f"{run.container_id} StartContainer")
