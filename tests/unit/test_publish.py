"""The daemon's publish: push-list runs in a child process, one at a time, retried a bounded number of times, killed
when it hangs or when the plugin stops. A stand-in for push-list (a script that records its arguments and answers as
told) plays the registry's part; the real one is in tests/e2e/test_registry_lists.py and test_publish.py."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import textwrap
from pathlib import Path

import pytest

from nri_optimizer import config as cfg
from nri_optimizer import publish
from nri_optimizer.metrics import Metrics
from nri_optimizer.publish import Job, Publisher

# Answers, one a line, taken in turn (the last one repeats): "<exit status> <seconds to take> <last stderr line>".
FAKE = textwrap.dedent("""\
    import os, sys, time
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "calls"), "a") as calls:
        calls.write(" ".join(sys.argv[1:]) + "\\n")
    with open(os.path.join(here, "pids"), "a") as pids:
        pids.write(f"{os.getpid()}\\n")
    answers = open(os.path.join(here, "answers")).read().splitlines()
    done = sum(1 for _ in open(os.path.join(here, "calls")))
    status, seconds, line = answers[min(done, len(answers)) - 1].split(" ", 2)
    time.sleep(float(seconds))
    print("nri-optimizer push-list: " + line, file=sys.stderr)
    sys.exit(int(status))
""")


class Counted(Metrics):
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def list_published(self) -> None:
        self._count("published")

    def list_publish_retried(self) -> None:
        self._count("retried")

    def list_publish_failed(self, reason: str) -> None:
        self._count(f"failed:{reason}")


class Fake:
    def __init__(self, directory: Path, answers: list[str]) -> None:
        self.dir = directory
        (directory / "push_list.py").write_text(FAKE)
        (directory / "answers").write_text("\n".join(answers) + "\n")
        self.metrics = Counted()

    def publisher(self, attempts: int = 3, **kwargs: float) -> Publisher:
        return Publisher(
            ["registry.test/*"],
            ["registry.test"],
            attempts,
            metrics=lambda: self.metrics,
            command=[sys.executable, str(self.dir / "push_list.py")],
            first_pause=0.05,
            **kwargs,
        )

    def calls(self) -> list[str]:
        path = self.dir / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.dir / "pids").read_text().split()]


def job(list_path: str = "/results/app:v1", cid: str = "c1", workload: str = "") -> Job:
    return Job(cid, "registry.test/app:v1", "registry.test", list_path, workload)


async def settle(publisher: Publisher) -> None:
    async with asyncio.timeout(20):
        while not publisher.idle:
            await asyncio.sleep(0.01)


async def test_a_list_is_pushed_once_with_what_push_list_needs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = Fake(tmp_path, ["0 0 pushed /results/app:v1 from node n as registry.test/app@sha256:1"])
    publisher = fake.publisher()
    assert publisher.wants("registry.test/app:v1") and not publisher.wants("docker.io/library/app:v1")
    with caplog.at_level(logging.INFO, logger="nri_optimizer.publish"):
        publisher.submit(job(workload="web"))
        await settle(publisher)
    assert fake.calls() == ["push-list registry.test/app:v1 --list /results/app:v1 --insecure --workload web"]
    assert fake.metrics.counts == {"published": 1}
    assert caplog.messages == [
        "c1 published the list of registry.test/app:v1: pushed /results/app:v1 from node n as "
        "registry.test/app@sha256:1"
    ]


async def test_failures_are_tried_again_a_bounded_number_of_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = Fake(tmp_path, ["1 0 cannot reach registry registry.test: Connection refused"])
    publisher = fake.publisher(attempts=3)
    with caplog.at_level(logging.INFO, logger="nri_optimizer.publish"):
        publisher.submit(job())
        await settle(publisher)
    assert len(fake.calls()) == 3
    assert fake.metrics.counts == {"retried": 2, "failed:attempts": 1}
    assert caplog.messages == [
        "c1 publishing the list of registry.test/app:v1 failed (try 1 of 3): cannot reach registry registry.test: "
        "Connection refused; trying again in 0.05 s",
        "c1 publishing the list of registry.test/app:v1 failed (try 2 of 3): cannot reach registry registry.test: "
        "Connection refused; trying again in 0.1 s",
        "c1 gave up publishing the list of registry.test/app:v1 after 3 tries: cannot reach registry registry.test: "
        "Connection refused; it stays in /results/app:v1 (nri-optimizer push-list registry.test/app:v1 --list "
        "/results/app:v1 publishes it)",
    ]


async def test_a_registry_back_in_time_gets_the_list(tmp_path: Path) -> None:
    fake = Fake(tmp_path, ["1 0 cannot reach registry", "1 0 cannot reach registry", "0 0 pushed"])
    publisher = fake.publisher(attempts=3)
    publisher.submit(job())
    await settle(publisher)
    assert len(fake.calls()) == 3
    assert fake.metrics.counts == {"retried": 2, "published": 1}


async def test_what_push_list_refuses_is_not_tried_again(tmp_path: Path) -> None:
    fake = Fake(tmp_path, ["2 0 no recorded list at /results/app:v1"])
    publisher = fake.publisher(attempts=3)
    publisher.submit(job())
    await settle(publisher)
    assert len(fake.calls()) == 1
    assert fake.metrics.counts == {"failed:refused": 1}


async def test_one_push_at_a_time_and_a_waiting_list_queued_again_is_pushed_once(tmp_path: Path) -> None:
    fake = Fake(tmp_path, ["0 0.3 pushed"])
    publisher = fake.publisher()
    publisher.submit(job("/results/a", "c1"))
    await asyncio.sleep(0.1)  # a's push runs
    publisher.submit(job("/results/a", "c2"))
    publisher.submit(job("/results/b", "c3"))
    publisher.submit(job("/results/a", "c4"))  # waits already: once, as c4's
    await settle(publisher)
    assert [call.split()[3] for call in fake.calls()] == ["/results/a", "/results/a", "/results/b"]
    assert fake.metrics.counts == {"published": 3}


async def test_a_push_that_hangs_is_killed(tmp_path: Path) -> None:
    fake = Fake(tmp_path, ["0 30 pushed"])
    publisher = fake.publisher(attempts=1, try_timeout=0.5)
    publisher.submit(job())
    await settle(publisher)
    assert fake.metrics.counts == {"failed:attempts": 1}
    (pid,) = fake.pids()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_stopping_kills_the_push_and_says_what_was_not_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = Fake(tmp_path, ["0 30 pushed"])
    publisher = fake.publisher()
    publisher.submit(job("/results/a", "c1"))
    publisher.submit(job("/results/b", "c2"))
    async with asyncio.timeout(10):
        while not fake.calls():
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the child has started for real
    with caplog.at_level(logging.WARNING, logger="nri_optimizer.publish"):
        await publisher.close()
    (pid,) = fake.pids()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert fake.metrics.counts == {"failed:shutdown": 2}
    assert [m.split(" ")[0] for m in caplog.messages] == ["c1", "c2"]
    assert caplog.messages[1] == (
        "c2 the list of registry.test/app:v1 is not published: the plugin is stopping; it "
        "stays in /results/b (nri-optimizer push-list registry.test/app:v1 --list /results/b "
        "publishes it)"
    )


async def test_a_full_queue_drops_and_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(publish, "MAX_PENDING", 2)
    fake = Fake(tmp_path, ["0 0.3 pushed"])
    publisher = fake.publisher()
    for name in "abcd":  # a starts at once; b and c wait; d finds the queue full
        publisher.submit(job(f"/results/{name}"))
        await asyncio.sleep(0.05)
    await settle(publisher)
    assert [call.split()[3] for call in fake.calls()] == ["/results/a", "/results/b", "/results/c"]
    assert fake.metrics.counts == {"published": 3, "failed:queue_full": 1}


def test_the_child_runs_this_interpreter_as_isolated_as_the_daemon() -> None:
    assert publish.push_list_command() == [
        sys.executable,
        *(["-I"] if sys.flags.isolated else []),
        "-m",
        "nri_optimizer",
    ]


def test_publish_keys() -> None:
    assert (cfg.Config().publish, cfg.Config().publish_insecure, cfg.Config().publish_attempts) == ((), (), 4)
    assert cfg.parse_toml(
        'publish = ["registry.example/*"]\npublish_insecure = ["127.0.0.1:5000", "[::1]:5000", '
        '"registry.local"]\npublish_attempts = 10',
        "F",
    ) == {
        "publish": ("registry.example/*",),
        "publish_insecure": ("127.0.0.1:5000", "[::1]:5000", "registry.local"),
        "publish_attempts": 10,
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "publish = true",
            "F: publish: got True (boolean); expected a list of image name patterns whose lists are pushed "
            'to the image\'s registry ([] for none, ["*"] for every image), e.g. publish = ["registry.example/apps/*"]',
        ),
        (
            'publish = ["a b"]',
            "F: publish: pattern 'a b' contains white space, which no name has; expected a list of "
            'image name patterns whose lists are pushed to the image\'s registry ([] for none, ["*"] for every image), '
            'e.g. publish = ["registry.example/apps/*"]',
        ),
        (
            'publish_insecure = ["http://registry.local"]',
            "F: publish_insecure: 'http://registry.local' is not a "
            "registry's host or host:port; expected a list of registries (host or host:port) reached over plain HTTP or TLS "
            'that is not verified, e.g. publish_insecure = ["registry.local:5000"]',
        ),
        (
            "publish_attempts = 0",
            "F: publish_attempts: got 0 (integer); expected a whole number of tries from 1 to 10, "
            "e.g. publish_attempts = 4",
        ),
    ],
)
def test_bad_publish_keys_name_the_fix(text: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.parse_toml(text, "F")
    assert str(caught.value) == message
