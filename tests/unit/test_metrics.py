"""The metrics endpoint (nri_optimizer/metrics.py) with the real prometheus-client, over a real unix socket and
loopback TCP; and the one-line error when metrics_address is set without the library."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nri_optimizer.metrics import PrometheusMetrics


async def get(address: str, request: bytes) -> tuple[str, dict[str, str], bytes]:
    if address.startswith("/"):
        reader, writer = await asyncio.open_unix_connection(address)
    else:
        host, _, port = address.rpartition(":")
        reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}, body


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


async def test_counts_are_served_in_the_prometheus_text_format_on_a_unix_socket(tmp_path: Path) -> None:
    metrics = PrometheusMetrics(in_flight=lambda: 3)
    metrics.trace_started()
    metrics.trace_completed(17)
    metrics.trace_lost("trace_server")
    metrics.not_traced("annotation")
    metrics.not_traced("annotation")
    metrics.kernel(events=20, overflowed=True, dropped=2)
    metrics.start_container_handled(0.003)
    address = str(tmp_path / "metrics.sock")
    server = await metrics.serve(address)
    try:
        assert stat.S_IMODE(os.stat(address).st_mode) == 0o600
        status, headers, body = await get(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert int(headers["content-length"]) == len(body)
        values = samples(body)
        assert values[("nri_optimizer_traces_started_total", ())] == 1
        assert values[("nri_optimizer_traces_completed_total", ())] == 1
        assert values[("nri_optimizer_files_recorded_total", ())] == 17
        assert values[("nri_optimizer_traces_lost_total", (("reason", "trace_server"),))] == 1
        assert values[("nri_optimizer_containers_not_traced_total", (("reason", "annotation"),))] == 2
        assert values[("nri_optimizer_kernel_events_total", ())] == 20
        assert values[("nri_optimizer_queue_overflows_total", ())] == 1
        assert values[("nri_optimizer_kernel_dropped_events_total", ())] == 2
        assert values[("nri_optimizer_traces_in_flight", ())] == 3
        assert values[("nri_optimizer_start_container_seconds_bucket", (("le", "0.0025"),))] == 0
        assert values[("nri_optimizer_start_container_seconds_bucket", (("le", "0.005"),))] == 1
        assert values[("nri_optimizer_start_container_seconds_count", ())] == 1
        assert values[("process_resident_memory_bytes", ())] > 0
        status, headers, body = await get(
            address, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"
        )
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n")
        assert (await get(address, b"GET /other HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 404 Not Found"
        assert (await get(address, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == "HTTP/1.1 405 Method Not Allowed"
        # Not a scraper: a head past the limit is closed on without an answer.
        assert await get(address, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 10000 + b"\r\n\r\n") == ("", {}, b"")
    finally:
        server.close()
        await server.wait_closed()


async def test_loopback_tcp(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = await PrometheusMetrics(in_flight=lambda: 0).serve(f"127.0.0.1:{port}")
    try:
        status, _, body = await get(f"127.0.0.1:{port}", b"GET /metrics HTTP/1.0\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        assert samples(body)[("nri_optimizer_traces_started_total", ())] == 0
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stale_socket_is_replaced_and_anything_else_is_refused(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(stale))
    server = await PrometheusMetrics(in_flight=lambda: 0).serve(str(stale))
    server.close()
    await server.wait_closed()
    regular = tmp_path / "file"
    regular.write_text("mine")
    with pytest.raises(FileExistsError, match="it exists and is not a socket"):
        await PrometheusMetrics(in_flight=lambda: 0).serve(str(regular))
    assert regular.read_text() == "mine"


def test_metrics_address_without_the_library_is_one_line_naming_the_pip_command(tmp_path: Path) -> None:
    config = tmp_path / "plugin.conf"
    config.write_text(f'persist_dir = "{tmp_path}/results"\nmetrics_address = "127.0.0.1:9464"\n')
    hide = (
        "import sys; sys.modules['prometheus_client'] = None; from nri_optimizer.cli import main; "
        f"sys.exit(main(['--config', '{config}']))"
    )
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"nri-optimizer: {config}: metrics_address: needs prometheus-client, which comes with an "
        "extra: pip install 'nri-optimizer[metrics]' (or leave metrics_address unset)\n"
    )
