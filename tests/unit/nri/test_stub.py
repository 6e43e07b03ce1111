import asyncio
import socket
import time

import pytest

from nri_optimizer.errors import ConfigError
from nri_optimizer.nri import connection
from nri_optimizer.nri.api import Identity, event_mask, identity_from_executable
from nri_optimizer.nri.proto import nri_pb2 as api
from nri_optimizer.nri.stub import Stub, tolerates_configure_errors
from tests.unit.fake_runtime import FakeRuntime


class Recorder:
    """A plugin with start and stop handlers that records what it was called with."""

    def __init__(self, *, start_delay: float = 0.0, start_error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.configured: list[str] = []
        self.start_delay = start_delay
        self.start_error = start_error

    async def configure(self, config: str, runtime: str, version: str) -> None:
        if config == "bad":
            raise ConfigError("Configure: timeout: got 'x' (string); expected a whole number")
        self.configured.append(config)

    async def start_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.calls.append(("start", container.id))
        await asyncio.sleep(self.start_delay)
        if self.start_error:
            raise self.start_error

    async def stop_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        self.calls.append(("stop", container.id))


class StopOnly:
    async def configure(self, config: str, runtime: str, version: str) -> None:
        pass

    async def stop_container(self, pod: api.PodSandbox, container: api.Container) -> None:
        pass


async def connected(plugin, *, register_delay: float = 0.0):
    """A stub in pre-launched mode on one end of a socketpair, the fake runtime on the other."""
    ours, theirs = socket.socketpair()
    stub = Stub(plugin, Identity("test", "07"))
    task = asyncio.create_task(stub.run_prelaunched(theirs.detach()))
    runtime = FakeRuntime(register_delay=register_delay)
    runtime.attach(*await asyncio.open_unix_connection(sock=ours))
    return stub, runtime, task


def container(cid: str) -> api.Container:
    return api.Container(id=cid, name="c", pid=42)


def test_event_mask_comes_from_handlers():
    assert event_mask(Recorder()) == 0x220
    assert event_mask(StopOnly()) == 0x200
    assert event_mask(Recorder(), ["StopContainer"]) == 0x200


def test_event_mask_refuses_an_event_the_plugin_cannot_handle():
    with pytest.raises(
        ValueError, match="event 'StartContainer' is not one this plugin handles; choose from StopContainer"
    ):
        event_mask(StopOnly(), ["StartContainer"])


def test_identity_from_executable_name():
    assert identity_from_executable("/opt/nri/plugins/02-optimizer-nri-plugin") == Identity(
        "optimizer-nri-plugin", "02"
    )
    assert identity_from_executable("/usr/bin/nri-optimizer") is None
    with pytest.raises(ValueError, match="exactly two digits"):
        Identity("x", "2")


async def test_registers_and_configure_returns_the_event_mask():
    _stub, runtime, task = await connected(Recorder())
    await asyncio.wait_for(runtime.registered.wait(), 2)
    assert [(r.plugin_name, r.plugin_idx) for r in runtime.registrations] == [("test", "07")]
    response = await runtime.configure("persist_dir = '/x'")
    assert response.events == 0x220
    await runtime.close()
    await asyncio.wait_for(task, 2)  # pre-launched: the runtime hanging up ends the plugin


async def test_configure_is_served_before_the_register_reply_arrives():
    plugin = Recorder()
    stub, runtime, task = await connected(plugin, register_delay=0.5)
    response = await asyncio.wait_for(runtime.configure("a = 1"), 0.3)
    assert response.events == 0x220 and plugin.configured == ["a = 1"]
    assert not stub.registered.is_set()
    await asyncio.wait_for(stub.registered.wait(), 2)
    await runtime.close()
    await task


async def test_configure_error_is_an_invalid_argument_status_with_the_message():
    _stub, runtime, task = await connected(Recorder())
    with pytest.raises(connection.RpcError) as info:
        await runtime.configure("bad")
    assert (info.value.code, info.value.message) == (3, "Configure: timeout: got 'x' (string); expected a whole number")
    await runtime.close()
    await task


async def test_split_synchronize_echoes_more():
    _stub, runtime, task = await connected(Recorder())
    await runtime.configure()
    many = [api.Container(id=f"c{i:04d}", name="n" * 100) for i in range(200)]  # well over one 4096-byte frame
    for more in (True, True, False):
        reply = api.SynchronizeResponse()
        reply.ParseFromString(await runtime.call("Synchronize", api.SynchronizeRequest(containers=many, more=more)))
        assert reply.more is more
    await runtime.close()
    await task


async def test_start_arrives_as_state_change_and_as_v012_rpc():
    plugin = Recorder()
    _stub, runtime, task = await connected(plugin)
    await runtime.configure()
    assert (
        await runtime.call("StateChange", api.StateChangeEvent(event=api.START_CONTAINER, container=container("a")))
        == b""
    )
    assert await runtime.call("StartContainer", api.StartContainerRequest(container=container("b"))) == b""
    assert await runtime.call("StopContainer", api.StopContainerRequest(container=container("b"))) == b""
    # Events the plugin did not subscribe to are ignored, not answered with an error.
    assert await runtime.call("StateChange", api.StateChangeEvent(event=api.RUN_POD_SANDBOX)) == b""
    assert plugin.calls == [("start", "a"), ("start", "b"), ("stop", "b")]
    await runtime.close()
    await task


async def test_v012_start_rpc_without_handler_is_unimplemented_so_the_runtime_falls_back():
    _stub, runtime, task = await connected(StopOnly())
    await runtime.configure()
    with pytest.raises(connection.RpcError) as info:
        await runtime.call("StartContainer", api.StartContainerRequest(container=container("a")))
    assert info.value.code == 12
    await runtime.close()
    await task


@pytest.mark.parametrize(
    ("service", "method"), [("nri.pkg.api.v1alpha1.Plugin", "Frobnicate"), ("other.Service", "Configure")]
)
async def test_unknown_service_or_method_is_code_12(service, method):
    _stub, runtime, task = await connected(Recorder())
    with pytest.raises(connection.RpcError) as info:
        await runtime.call(method, api.Empty(), service=service)
    assert (info.value.code, info.value.message) == (12, f"{service}/{method} is not implemented")
    await runtime.close()
    await task


async def test_a_hanging_handler_is_answered_ok_within_its_share_of_the_request_timeout():
    plugin = Recorder(start_delay=30)
    _stub, runtime, task = await connected(plugin)
    await runtime.configure(request_timeout_ms=400)
    began = time.monotonic()
    assert await runtime.call("StartContainer", api.StartContainerRequest(container=container("slow"))) == b""
    assert 0.25 < time.monotonic() - began < 0.4
    await runtime.close()
    await task


async def test_a_failing_handler_is_answered_ok():
    _stub, runtime, task = await connected(Recorder(start_error=RuntimeError("boom")))
    await runtime.configure()
    assert await runtime.call("StartContainer", api.StartContainerRequest(container=container("x"))) == b""
    await runtime.close()
    await task


async def test_external_mode_reconnects_and_registers_again(tmp_path):
    path = str(tmp_path / "nri.sock")
    runtimes: list[FakeRuntime] = []
    connected_event = asyncio.Event()

    def on_connect(reader, writer):
        runtime = FakeRuntime()
        runtime.attach(reader, writer)
        runtimes.append(runtime)
        connected_event.set()

    stub = Stub(Recorder(), Identity("ext", "10"))
    task = asyncio.create_task(stub.run_external(path))
    await asyncio.sleep(0.2)  # nothing listens yet: the stub keeps retrying
    server = await asyncio.start_unix_server(on_connect, path)
    await asyncio.wait_for(connected_event.wait(), 2)
    await asyncio.wait_for(runtimes[0].registered.wait(), 2)
    await runtimes[0].close()
    connected_event.clear()
    await asyncio.wait_for(connected_event.wait(), 2)
    await asyncio.wait_for(runtimes[1].registered.wait(), 2)
    assert [r.registrations[0].plugin_name for r in runtimes] == ["ext", "ext"]
    task.cancel()
    server.close()
    for runtime in runtimes:
        await runtime.close()


@pytest.mark.parametrize(
    ("name", "version", "tolerant"),
    [
        ("containerd", "2.1.9+unknown", True),
        ("containerd", "v2.0.0", True),
        ("containerd", "1.7.24", False),
        ("cri-o", "1.30", False),
    ],
)
def test_only_runtimes_known_to_survive_a_configure_error_are_sent_one(name, version, tolerant):
    assert tolerates_configure_errors(name, version) is tolerant


async def test_bad_config_on_containerd_17_is_answered_ok_and_the_plugin_stays_inert():
    plugin = Recorder()
    _stub, runtime, task = await connected(plugin)
    request = api.ConfigureRequest(config="bad", runtime_name="containerd", runtime_version="1.7.24")
    response = api.ConfigureResponse()
    response.ParseFromString(await runtime.call("Configure", request))
    assert response.events == 0x220
    assert await runtime.call("StartContainer", api.StartContainerRequest(container=container("a"))) == b""
    assert plugin.calls == []
    await runtime.close()
    await task


async def test_garbage_on_the_socket_drops_that_connection_and_the_plugin_reconnects(tmp_path):
    """A live fuzz of the daemon: an oversized frame, then frames of random bytes. Each bad connection is
    closed; the daemon survives and registers on the next good one."""
    import random

    path = str(tmp_path / "nri.sock")
    good = FakeRuntime()
    served = []

    async def on_connect(reader, writer):
        served.append(writer)
        if len(served) == 1:
            writer.write(b"\x00\x00\x00\x01\xff\xff\xff\xff")  # a frame longer than anything allowed
        elif len(served) == 2:
            rng = random.Random(5)
            writer.write(bytes(rng.getrandbits(8) for _ in range(10_000)))
        else:
            good.attach(reader, writer)
            return
        await writer.drain()
        await reader.read()  # until the plugin hangs up on us

    stub = Stub(Recorder(), Identity("fuzz", "11"))
    server = await asyncio.start_unix_server(on_connect, path)
    task = asyncio.create_task(stub.run_external(path))
    await asyncio.wait_for(good.registered.wait(), 5)
    assert len(served) == 3 and not task.done()
    response = await good.configure()
    assert response.events == 0x220
    task.cancel()
    server.close()
    await good.close()


async def test_an_undecodable_request_is_answered_with_an_error_and_the_connection_lives_on():
    _stub, runtime, task = await connected(Recorder())
    assert runtime.connection is not None
    with pytest.raises(connection.RpcError) as info:
        await runtime.connection.call("nri.pkg.api.v1alpha1.Plugin", "Configure", b"\xff\xff\xff", 2)
    assert info.value.code == 3 and info.value.message.startswith("undecodable ConfigureRequest")
    assert (await runtime.configure()).events == 0x220
    await runtime.close()
    await task
