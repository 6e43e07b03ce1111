"""The metrics endpoint of a real daemon (pre-launched by containerd, configured through Configure) scraped during
and after real traces: every number agrees with what the log says happened."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from testbed.tracing import Traced, build_workload_image, start_traced

RECORDED = re.compile(r"recorded ([0-9]+) files \(stopped; ([0-9]+) events, ([0-9]+) files reported")


@pytest.fixture(scope="session")
def workload_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workload_image(tmp_path_factory.mktemp("workload") / "workload.tar")


def scrape(address: str) -> dict[str, float]:
    """name{label="value"} -> value, as the library's own parser reads the exposition."""
    if address.startswith("/"):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            conn.connect(address)
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            response = b"".join(iter(lambda: conn.recv(65536), b""))
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK"), head
        text = body.decode()
    else:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_scraped_numbers_match_the_log(make_containerd, flavour, tmp_path, workload_image, kind) -> None:
    address = str(tmp_path / "metrics.sock") if kind == "unix" else f"127.0.0.1:{free_port()}"
    traced: Traced = start_traced(
        make_containerd, flavour, tmp_path, workload_image, extra=f'metrics_address = "{address}"\n'
    )
    traced.log.wait_for(re.escape(f"metrics on {address} (GET /metrics)"))
    before = scrape(address)
    assert before["nri_optimizer_traces_started_total"] == 0
    assert before["nri_optimizer_start_container_seconds_count"] == 0

    # During a trace: started, in flight, nothing completed yet.
    running = traced.run(["/bin/sh", "-c", "cat /data/f001 /data/f002 /data/f003; exec sleep 1000"], wait=False)
    traced.log.wait_for(rf"{running.container_id} tracing pid")
    during = scrape(address)
    assert during["nri_optimizer_traces_started_total"] == 1
    assert during["nri_optimizer_traces_in_flight"] == 1
    assert during["nri_optimizer_traces_completed_total"] == 0
    assert during["nri_optimizer_start_container_seconds_count"] == 1
    assert 0 < during["nri_optimizer_start_container_seconds_sum"] < 1.5

    # After it: the numbers of the log line.
    line = traced.finish(running)
    listed, events, reported = map(int, RECORDED.search(line).groups())
    assert traced.result() == ["/bin/busybox", "/data/f001", "/data/f002", "/data/f003"]
    assert listed == 4
    # The image is recorded now (and kept, the default): the next container of it is not traced, and counted so.
    again = traced.run(["/bin/cat", "/data/f004"])
    traced.log.wait_for(rf"{again.container_id} not traced: .* is recorded already")
    opted_out = traced.run(["/bin/true"], annotations={"trace.nri-optimizer.io/pod": "false"})
    traced.log.wait_for(rf"{opted_out.container_id} not traced: annotation")
    after = scrape(address)
    assert after["nri_optimizer_traces_started_total"] == 1
    assert after["nri_optimizer_traces_completed_total"] == 1
    assert after["nri_optimizer_traces_in_flight"] == 0
    assert after["nri_optimizer_files_recorded_total"] == listed
    assert after["nri_optimizer_kernel_events_total"] == events >= reported
    assert after["nri_optimizer_queue_overflows_total"] == 0
    assert after["nri_optimizer_kernel_dropped_events_total"] == 0
    assert after['nri_optimizer_containers_not_traced_total{reason="recorded"}'] == 1
    assert after['nri_optimizer_containers_not_traced_total{reason="annotation"}'] == 1
    assert after["nri_optimizer_start_container_seconds_count"] == 3
    assert after["nri_optimizer_result_write_failures_total"] == 0
    assert after["nri_optimizer_trace_server_restarts_total"] == 0
    assert not any(name.startswith("nri_optimizer_traces_lost_total{") for name in after)
    assert after["process_resident_memory_bytes"] > 0
    (tmp_path / "scrape.txt").write_text("".join(f"{k} {v}\n" for k, v in sorted(after.items())))
