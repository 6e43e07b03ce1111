import os
import subprocess
import sys

import pytest

from nri_optimizer.cli.convert import default_list, nydusify_command
from nri_optimizer.nydus.tool import INSTALL_HINT


def test_the_exact_nydusify_command_line():
    assert nydusify_command("nydusify", "nginx", "reg/nginx:nydusv6", "6", ["--platform", "linux/amd64"]) == [
        "nydusify",
        "convert",
        "--source",
        "nginx",
        "--target",
        "reg/nginx:nydusv6",
        "--fs-version",
        "6",
        "--platform",
        "linux/amd64",
        "--prefetch-patterns",
    ]


def test_default_list_is_where_the_plugin_saves_it():
    assert default_list("/r", "nginx") == "/r/library/nginx:latest"
    assert default_list("/r", "localhost:5000/a/b:1") == "/r/a/b:1"
    assert default_list("/r", "nginx", "web") == "/r/library/nginx:latest+web"  # a workload's (workload_key)


def convert(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "nri_optimizer", "convert", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def recorded(tmp_path):
    (tmp_path / "library").mkdir()
    path = tmp_path / "library" / "nginx:latest"
    path.write_text("/usr/sbin/nginx\n/etc/nginx/nginx.conf\n")
    return tmp_path


def test_a_named_nydusify_that_is_not_there_is_a_usage_error(recorded):
    result = convert(
        "--source",
        "nginx",
        "--target",
        "reg/nginx:opt",
        "--persist-dir",
        str(recorded),
        "--nydusify",
        "nydusify-not-here",
        "--config",
        os.devnull,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "nri-optimizer convert: --nydusify nydusify-not-here: not an executable\n"


def test_without_nydusify_or_nydus_image_it_names_the_install_command(recorded, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = convert(
        "--source",
        "nginx",
        "--target",
        "reg/nginx:opt",
        "--persist-dir",
        str(recorded),
        "--config",
        os.devnull,
        env={"PATH": str(empty), "NRI_OPTIMIZER_CACHE": str(empty)},
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"nri-optimizer convert: nydus-image is not installed (not on PATH, not in "
        f"{empty}/tools/nydus-rs-2.2.0/bin); install nydus-rs 2.2.0 with `{INSTALL_HINT}`\n"
    )


def stub(tmp_path, name, script):
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_an_unreachable_registry_is_one_line(recorded, tmp_path):
    nydus_image = stub(tmp_path, "nydus-image", f"touch {tmp_path}/ran")
    result = convert(
        "--source",
        "127.0.0.1:1/app:1",
        "--target",
        "127.0.0.1:1/app:1-nydus",
        "--source-insecure",
        "--list",
        str(recorded / "library" / "nginx:latest"),
        "--nydus-image",
        str(nydus_image),
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines()[-1] == (
        "nri-optimizer convert: cannot reach registry 127.0.0.1:1: "
        "https://127.0.0.1:1/v2/: Connection refused; "
        "http://127.0.0.1:1/v2/: Connection refused"
    )
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("text", ["", "\n", "# incomplete: 12 events lost\n", "relative/path\n"])
def test_a_list_naming_no_file_is_an_error(tmp_path, text):
    (tmp_path / "list").write_text(text)
    result = convert(
        "--source",
        "nginx",
        "--target",
        "reg/nginx:opt",
        "--list",
        str(tmp_path / "list"),
        "--nydusify",
        str(stub(tmp_path, "nydusify", f"touch {tmp_path}/ran")),
    )
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"nri-optimizer convert: {tmp_path}/list names no file: nothing to prefetch (record "
        "the image again, or convert without a prefetch table with --no-list)\n"
    )
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fs-version", "5"], "--fs-version 5: the built-in converter (nydus-image) writes RAFS v6 only"),
        (
            ["--", "--platform", "linux/amd64"],
            "arguments after -- are nydusify's, and nydusify is not installed: --platform linux/amd64",
        ),
        (["--platform", "amd64"], "--platform amd64: expected OS/ARCH, e.g. linux/amd64"),
    ],
)
def test_what_the_built_in_converter_cannot_do_is_a_usage_error(recorded, tmp_path, args, message):
    nydus_image = stub(tmp_path, "nydus-image", f"touch {tmp_path}/ran")
    own, _, extra = " ".join(args).partition("-- ")
    result = convert(
        "--source",
        "nginx",
        "--target",
        "reg/nginx:opt",
        "--persist-dir",
        str(recorded),
        "--config",
        os.devnull,
        "--nydus-image",
        str(nydus_image),
        *own.split(),
        *(["--", *extra.split()] if extra else []),
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"nri-optimizer convert: {message}\n"
    assert not (tmp_path / "ran").exists()


def test_with_nydusify_it_runs_it_with_the_list_on_stdin(recorded, tmp_path):
    fake = stub(tmp_path, "nydusify", f'echo "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin')
    result = convert(
        "--source",
        "nginx",
        "--target",
        "reg/nginx:opt",
        "--persist-dir",
        str(recorded),
        "--config",
        os.devnull,
        "--",
        "--platform",
        "linux/amd64",
        env={"PATH": f"{fake.parent}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "argv").read_text() == (
        "convert --source nginx --target reg/nginx:opt --fs-version 6 --platform linux/amd64 --prefetch-patterns\n"
    )
    assert (tmp_path / "stdin").read_text() == "/usr/sbin/nginx\n/etc/nginx/nginx.conf\n"


def test_no_recorded_list(tmp_path):
    result = convert("--source", "redis", "--target", "t", "--persist-dir", str(tmp_path), "--config", os.devnull)
    assert result.returncode == 2
    assert result.stderr == (
        f"nri-optimizer convert: no recorded list at {tmp_path}/library/redis:latest; record "
        "one first (nri-optimizer profile redis) or pass --list\n"
    )


def test_nydusify_gets_the_paths_of_an_incomplete_list_and_the_user_a_warning(tmp_path):
    (tmp_path / "list").write_text("# incomplete: 3 events lost\n/bin/app\n/etc/app.conf\n")
    fake = stub(tmp_path, "nydusify", f'echo "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin')
    result = convert(
        "--source",
        "reg:5000/app:1",
        "--target",
        "reg:5000/app:nydus",
        "--list",
        str(tmp_path / "list"),
        "--source-insecure",
        "--target-insecure",
        "--nydusify",
        str(fake),
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "argv").read_text() == (
        "convert --source reg:5000/app:1 --target reg:5000/app:nydus "
        "--fs-version 6 --source-insecure --target-insecure "
        "--prefetch-patterns\n"
    )
    assert (tmp_path / "stdin").read_text() == "/bin/app\n/etc/app.conf\n"
    assert result.stderr.splitlines()[0] == (
        f"nri-optimizer convert: warning: {tmp_path}/list is incomplete "
        "(3 events lost): the prefetch table gets the files it has"
    )


def test_no_list_converts_with_nydusify_without_prefetch_patterns(tmp_path):
    fake = stub(tmp_path, "nydusify", f'echo "$@" > {tmp_path}/argv\ncat > {tmp_path}/stdin')
    result = convert("--source", "app", "--target", "reg/app:nydus", "--no-list", "--nydusify", str(fake))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "argv").read_text() == "convert --source app --target reg/app:nydus --fs-version 6\n"
    assert (tmp_path / "stdin").read_text() == ""


def test_with_a_workload_it_takes_that_workloads_list(recorded, tmp_path):
    (recorded / "library" / "nginx:latest+web").write_text("/usr/sbin/nginx\n/etc/nginx/web.conf\n")
    fake = stub(tmp_path, "nydusify", f"cat > {tmp_path}/stdin")
    result = convert(
        "--source",
        "nginx",
        "--target",
        "reg/nginx:web",
        "--workload",
        "web",
        "--persist-dir",
        str(recorded),
        "--config",
        os.devnull,
        env={"PATH": f"{fake.parent}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stdin").read_text() == "/usr/sbin/nginx\n/etc/nginx/web.conf\n"
    missing = convert(
        "--source",
        "nginx",
        "--target",
        "t",
        "--workload",
        "api",
        "--persist-dir",
        str(recorded),
        "--config",
        os.devnull,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"nri-optimizer convert: no recorded list at {recorded}/library/nginx:latest+api;")


def test_with_a_timeout_in_the_config_it_takes_the_list_the_daemon_named_so(recorded, tmp_path):
    (recorded / "library" / "nginx:latest.timeout60s").write_text("/usr/sbin/nginx\n")
    conf = tmp_path / "timeout.conf"
    conf.write_text("timeout = 60\n")
    fake = stub(tmp_path, "nydusify", f"cat > {tmp_path}/stdin")
    result = convert(
        "--source",
        "nginx",
        "--target",
        "t",
        "--persist-dir",
        str(recorded),
        "--config",
        str(conf),
        env={"PATH": f"{fake.parent}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stdin").read_text() == "/usr/sbin/nginx\n"


def test_nydusify_gets_the_files_the_start_read_enough_of(tmp_path):
    """The list's CSV says /lib/big.so was read 1 MiB of 40: it stays in the list, out of the prefetch table."""
    (tmp_path / "list").write_text("/bin/app\n/lib/big.so\n/etc/app.conf\n")
    (tmp_path / "list.csv").write_text(
        "path,size,elapsed,resident\n/bin/app,200000,10,200000\n/lib/big.so,41943040,20,1048576\n/etc/app.conf,12,30,\n"
    )
    fake = stub(tmp_path, "nydusify", f"cat > {tmp_path}/stdin")

    def table(*flags: str) -> str:
        """What nydusify is given as its prefetch patterns, with these flags."""
        args = ["--source", "app", "--target", "reg/app:nydus", "--list", str(tmp_path / "list"), "--nydusify"]
        result = convert(*args, str(fake), *flags)
        assert result.returncode == 0, result.stderr
        return (tmp_path / "stdin").read_text()

    assert table() == "/bin/app\n/etc/app.conf\n"
    assert table("--unread-budget", "all") == "/bin/app\n/lib/big.so\n/etc/app.conf\n"
    assert table("--read-in-part", "last") == "/bin/app\n/etc/app.conf\n/lib/big.so\n"


def test_a_bad_unread_budget_is_a_usage_error(recorded):
    result = convert("--source", "nginx", "--target", "t:1", "--unread-budget", "lots", "--persist-dir", str(recorded))
    assert result.returncode == 2
    assert (
        result.stderr
        == "nri-optimizer convert: --unread-budget lots: expected a size (e.g. 256KiB, 1MiB, 0) or 'all'\n"
    )
