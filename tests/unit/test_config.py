import os
import subprocess
import sys

import pytest

from nri_optimizer import config as cfg
from nri_optimizer.config import load_config

UPSTREAM_FILE = """\
# The directory to persist accessed files list for container.
persist_dir = "/opt/nri/optimizer/results"
readable = false
server_path = "/usr/local/bin/optimizer-server"
timeout = 0
overwrite = false
events = [ "StartContainer", "StopContainer" ]
"""


def test_upstream_config_file_is_accepted_as_is():
    assert cfg.build(cfg.parse_toml(UPSTREAM_FILE, "f"), {}) == cfg.Config()


def test_defaults_are_upstreams():
    config = cfg.Config()
    assert (
        config.persist_dir,
        config.readable,
        config.server_path,
        config.timeout,
        config.overwrite,
        config.events,
    ) == (
        "/opt/nri/optimizer/results",
        False,
        "/usr/local/bin/optimizer-server",
        0,
        False,
        ("StartContainer", "StopContainer"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'timeout = "30"',
            "F: timeout: got '30' (string); expected a whole number of seconds >= 0 "
            "(0 traces until the container stops), e.g. timeout = 0",
        ),
        (
            "timeout = -1",
            "F: timeout: got -1 (integer); expected a whole number of seconds >= 0 "
            "(0 traces until the container stops), e.g. timeout = 0",
        ),
        ('readable = "yes"', "F: readable: got 'yes' (string); expected true or false, e.g. readable = false"),
        (
            'persist_dir = "results"',
            "F: persist_dir: got 'results' (string), which is not an absolute path; "
            'expected an absolute directory path, e.g. persist_dir = "/opt/nri/optimizer/results"',
        ),
        (
            'events = ["StartContainer", "Bogus"]',
            "F: events: unknown event 'Bogus'; expected a list of event "
            'names, e.g. events = ["StartContainer", "StopContainer"]',
        ),
        (
            'persist = "/x"',
            "F: persist: unknown key; remove it, or use one of: persist_dir, readable, server_path, "
            "timeout, overwrite, events, include_exec, unlimited_queue, event_mode, socket, log_level, log_file, mode, namespace_include, namespace_exclude, image_include, "
            "image_exclude, metrics_address, stall_timeout, on_repeat, merge_window, workload_key, publish, "
            "publish_insecure, publish_attempts",
        ),
        (
            'log_level = "loud"',
            "F: log_level: got 'loud' (string); expected one of debug, info, warning, error, e.g. log_level = \"info\"",
        ),
    ],
)
def test_bad_values_name_the_source_the_key_and_the_fix(text, message):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse_toml(text, "F")
    assert str(info.value) == message


def test_broken_toml_names_the_line():
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse_toml("timeout = ", "F")
    assert str(info.value) == "F: not valid TOML: Invalid value (at end of document); fix the syntax at that line"


def test_unreadable_file(tmp_path):
    path = tmp_path / "missing.conf"
    with pytest.raises(cfg.ConfigError) as info:
        cfg.read_file(str(path))
    assert str(info.value) == (
        f"{path}: cannot read the config file: No such file or directory; "
        "fix its permissions or point --config elsewhere"
    )


def test_persist_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    conf = tmp_path / "c.conf"
    conf.write_text(f'persist_dir = "{tmp_path / "f"}"\n')
    with pytest.raises(cfg.ConfigError) as info:
        load_config({"config": str(conf)})
    assert str(info.value) == (
        f"{conf}: persist_dir: {tmp_path / 'f'} exists and is not a directory; remove it or choose another path"
    )


def test_flags_override_the_file(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text('timeout = 5\nreadable = true\npersist_dir = "/from/file"\n')
    config = load_config({"config": str(conf), "timeout": 9, "persist_dir": "/from/flag"})
    assert (config.timeout, config.readable, config.persist_dir) == (9, True, "/from/flag")


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "nri_optimizer", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text("overwrite = 1\n")
    result = run_cli("--config", str(conf))
    assert result.returncode == 2
    assert result.stderr == (
        f"nri-optimizer: {conf}: overwrite: got 1 (integer); expected true or false, e.g. overwrite = false\n"
    )


def test_cli_bad_flag_value_exits_2_naming_the_flag(tmp_path):
    result = run_cli("--config", str(tmp_path / "none"), "--persist-dir", "rel")
    assert result.returncode == 2
    assert (
        result.stderr == f"nri-optimizer: {tmp_path / 'none'}: cannot read the config file: No such file or "
        "directory; fix its permissions or point --config elsewhere\n"
    )
    conf = tmp_path / "empty.conf"
    conf.write_text("")
    result = run_cli("--config", str(conf), "-persist-dir", "rel")  # upstream's one-dash spelling works too
    assert result.returncode == 2
    assert result.stderr == (
        "nri-optimizer: --persist-dir: got 'rel' (string), which is not an absolute path; "
        'expected an absolute directory path, e.g. persist_dir = "/opt/nri/optimizer/results"\n'
    )


def test_cli_readable_takes_go_bool_syntax(tmp_path):
    conf = tmp_path / "empty.conf"
    conf.write_text("readable = true\n")
    assert load_config({"config": str(conf), "readable": False}).readable is False
    result = run_cli("--config", str(conf), "--readable=maybe")
    assert result.returncode == 2
    assert "argument --readable: expected true or false, got 'maybe'" in result.stderr


def test_on_repeat_defaults_to_keep_and_overwrite_is_its_upstream_spelling():
    assert (cfg.Config().on_repeat, cfg.Config().merge_window, cfg.Config().workload_key) == ("keep", 5, "")
    assert cfg.build(cfg.parse_toml("overwrite = true", "F"), {}).on_repeat == "replace"
    assert cfg.build(cfg.parse_toml("overwrite = false", "F"), {}).on_repeat == "keep"
    merging = cfg.build(cfg.parse_toml('on_repeat = "merge"\nmerge_window = 3', "F"), {})
    assert (merging.on_repeat, merging.merge_window, merging.overwrite) == ("merge", 3, True)
    # A later source wins, whichever spelling it uses.
    assert cfg.build(cfg.parse_toml('on_repeat = "merge"', "F"), {"overwrite": False}).on_repeat == "keep"
    assert cfg.build(cfg.parse_toml("overwrite = true", "F"), {"on_repeat": "merge"}).on_repeat == "merge"
    # Both in one source, agreeing: upstream's shipped file plus our key.
    assert cfg.build(cfg.parse_toml('overwrite = false\non_repeat = "keep"', "F"), {}).on_repeat == "keep"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'overwrite = false\non_repeat = "merge"',
            'F: overwrite: false disagrees with on_repeat = "merge"; remove overwrite (on_repeat replaces it)',
        ),
        (
            'overwrite = true\non_repeat = "keep"',
            'F: overwrite: true disagrees with on_repeat = "keep"; remove overwrite (on_repeat replaces it)',
        ),
        (
            'on_repeat = "append"',
            "F: on_repeat: got 'append' (string); expected one of \"keep\" (the first complete "
            'run stays), "replace" (each run replaces it) or "merge" (the list merges the latest merge_window runs), '
            'e.g. on_repeat = "keep"',
        ),
        (
            "merge_window = 0",
            "F: merge_window: got 0 (integer); expected a whole number of runs from 1 to 100, e.g. merge_window = 5",
        ),
        (
            "merge_window = 101",
            "F: merge_window: got 101 (integer); expected a whole number of runs from 1 to 100, e.g. merge_window = 5",
        ),
        (
            'workload_key = "app"',
            "F: workload_key: got 'app' (string); expected \"\" (one list per image), "
            '"container-name", or "label:" and a pod label\'s key, e.g. workload_key = '
            '"label:app.kubernetes.io/name"',
        ),
        (
            'workload_key = "label:a/b/c"',
            "F: workload_key: got 'label:a/b/c' (string); expected \"\" (one list per "
            'image), "container-name", or "label:" and a pod label\'s key, e.g. workload_key = '
            '"label:app.kubernetes.io/name"',
        ),
    ],
)
def test_repeat_and_workload_keys_are_checked(text, message):
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse_toml(text, "F")
    assert str(info.value) == message


@pytest.mark.parametrize(
    "key", ["", "container-name", "label:app", "label:app.kubernetes.io/name", "label:example.com/Tier_1"]
)
def test_workload_keys_that_name_a_label_or_the_container(key):
    assert cfg.parse_toml(f'workload_key = "{key}"', "F") == {"workload_key": key}


def test_repeat_flags_that_disagree_are_an_error(tmp_path):
    with pytest.raises(cfg.ConfigError, match='--overwrite: true disagrees with on_repeat = "keep"'):
        load_config({"config": os.devnull, "overwrite": True, "on_repeat": "keep", "persist_dir": str(tmp_path)})
    config = load_config(
        {
            "config": os.devnull,
            "on_repeat": "merge",
            "merge_window": 2,
            "workload_key": "container-name",
            "persist_dir": str(tmp_path),
        }
    )
    assert (config.on_repeat, config.merge_window, config.workload_key) == ("merge", 2, "container-name")
