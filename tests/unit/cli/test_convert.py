import os
import subprocess
import sys

import pytest

from nri_optimizer.cli.convert import default_list, nydusify_command


def test_the_exact_nydusify_command_line():
    assert nydusify_command("nydusify", "nginx", "reg/nginx:nydusv6", "6", ["--platform", "linux/amd64"]) == [
        "nydusify", "convert", "--source", "nginx", "--target", "reg/nginx:nydusv6", "--fs-version", "6",
        "--platform", "linux/amd64", "--prefetch-patterns"]


def test_default_list_is_where_the_plugin_saves_it():
    assert default_list("/r", "nginx") == "/r/library/nginx:latest"
    assert default_list("/r", "localhost:5000/a/b:1") == "/r/a/b:1"


def convert(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nri_optimizer", "convert", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


@pytest.fixture
def recorded(tmp_path):
    (tmp_path / "library").mkdir()
    path = tmp_path / "library" / "nginx:latest"
    path.write_text("/usr/sbin/nginx\n/etc/nginx/nginx.conf\n")
    return tmp_path


def test_without_nydusify_it_says_so_and_prints_the_command(recorded, tmp_path):
    result = convert("--source", "nginx", "--target", "reg/nginx:opt", "--persist-dir", str(recorded),
                     "--nydusify", "nydusify-not-here", "--config", os.devnull)
    assert result.returncode == 1
    assert result.stdout == (f"nydusify-not-here convert --source nginx --target reg/nginx:opt --fs-version 6 "
                             f"--prefetch-patterns < {recorded}/library/nginx:latest\n")
    assert result.stderr.startswith("nri-optimizer convert: nydusify-not-here is not installed")


def test_with_nydusify_it_runs_it_with_the_list_on_stdin(recorded, tmp_path):
    fake = tmp_path / "bin" / "nydusify"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n")
    fake.chmod(0o755)
    result = convert("--source", "nginx", "--target", "reg/nginx:opt", "--persist-dir", str(recorded),
                     "--config", os.devnull, "--", "--platform", "linux/amd64",
                     env={"PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "argv").read_text() == ("convert --source nginx --target reg/nginx:opt --fs-version 6 "
                                               "--platform linux/amd64 --prefetch-patterns\n")
    assert (tmp_path / "stdin").read_text() == "/usr/sbin/nginx\n/etc/nginx/nginx.conf\n"


def test_no_recorded_list(tmp_path):
    result = convert("--source", "redis", "--target", "t", "--persist-dir", str(tmp_path), "--config", os.devnull)
    assert result.returncode == 2
    assert result.stderr == (f"nri-optimizer convert: no recorded list at {tmp_path}/library/redis:latest; record "
                             "one first (nri-optimizer profile redis) or pass --list\n")
