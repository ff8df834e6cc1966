"""Settings: the registry, CLI flags, the TOML file, precedence and error messages."""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import pwd
import textwrap
from pathlib import Path

import pytest

from pulsar_arbiter.ops.binds import BindSpec
from pulsar_arbiter.ops.config import (
    SETTINGS,
    Config,
    ConfigError,
    build_parser,
    default_control_socket,
    load_config,
    read_config_file,
    unreloadable_changes,
    usable_cpus,
)


def error_of(argv: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(argv)
    message = str(info.value)
    assert "\n" not in message
    return message


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


# -- the registry -------------------------------------------------------------------------


def test_registry_matches_config_fields() -> None:
    names = [spec.name for spec in SETTINGS]
    assert names == [f.name for f in dataclasses.fields(Config)]
    assert len(set(names)) == len(names)
    flags = [flag for spec in SETTINGS for flag in spec.flags]
    assert len(set(flags)) == len(flags)


@pytest.mark.parametrize("spec", SETTINGS, ids=lambda spec: spec.name)
def test_each_setting_is_documented_and_named_consistently(spec: object) -> None:
    assert isinstance(spec, type(SETTINGS[0]))
    assert spec.help
    if spec.kind == "positional":
        assert spec.flags == ()
    else:
        assert spec.option == "--" + spec.name.replace("_", "-")
    assert spec.convert(spec.get_default()) == spec.get_default()


def test_defaults() -> None:
    config = load_config([])
    assert config == Config()
    assert config.app is None
    assert config.bind == (BindSpec("tcp", host="127.0.0.1", port=8060),)
    assert config.workers == usable_cpus() >= 1
    assert (config.max_requests, config.max_requests_jitter) == (0, 0)
    assert (config.timeout, config.boot_timeout, config.graceful_timeout) == (30, 60, 30)
    assert (config.keep_alive, config.backlog, config.threads) == (5, 2048, 0)
    assert config.loop == "uvloop"
    assert config.name == "pulsar_arbiter"
    assert config.control_socket is None
    assert config.log_level == "info"
    assert (config.access_log, config.error_log) == (None, "-")
    assert (config.user, config.group, config.pid, config.config) == (None,) * 4
    assert (config.certfile, config.keyfile) == (None, None)
    assert not (config.preload or config.reuse_port or config.wsgi or config.http)


# -- flags ----------------------------------------------------------------------------------


def test_every_flag_parses() -> None:
    config = load_config(
        [
            "testapps.slow:Slow",
            "--bind=:8000",
            "-b",
            "udp://[::1]:9000",
            "--bind",
            "unix:/tmp/pa.sock",
            "-w",
            "3",
            "--max-requests",
            "1000",
            "--max-requests-jitter",
            "50",
            "--timeout",
            "2.5",
            "--boot-timeout",
            "90",
            "--graceful-timeout",
            "0",
            "--keep-alive",
            "0",
            "--backlog",
            "64",
            "--loop",
            "asyncio",
            "--control-socket",
            "/tmp/ctl.sock",
            "--name",
            "web-1",
            "--pid",
            "/tmp/pa.pid",
            "--log-level",
            "debug",
            "--access-log",
            "-",
            "--error-log",
            "/tmp/err.log",
            "--user",
            "0",
            "--group",
            "0",
            "--preload",
            "--reuse-port",
            "--wsgi",
            "--threads",
            "8",
        ]
    )
    assert config.app == "testapps.slow:Slow"
    assert [str(spec) for spec in config.bind] == [
        "tcp://0.0.0.0:8000",
        "udp://[::1]:9000",
        "unix:/tmp/pa.sock",
    ]
    assert (config.workers, config.max_requests, config.max_requests_jitter) == (3, 1000, 50)
    assert (config.timeout, config.boot_timeout, config.graceful_timeout) == (2.5, 90.0, 0.0)
    assert (config.keep_alive, config.backlog, config.loop) == (0.0, 64, "asyncio")
    assert config.control_socket_path == "/tmp/ctl.sock"
    assert (config.name, config.pid, config.log_level) == ("web-1", "/tmp/pa.pid", "debug")
    assert (config.access_log, config.error_log) == ("-", "/tmp/err.log")
    assert (config.user, config.group) == (0, 0)
    assert config.preload and config.reuse_port and config.wsgi
    assert config.threads == 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "abc"], "--workers: expected an integer >= 1, got 'abc'"),
        (["-w", "0"], "--workers: expected an integer >= 1, got '0'"),
        (["--workers"], "--workers: expected one argument"),
        (["--max-requests", "-1"], "--max-requests: expected an integer >= 0, got '-1'"),
        (["--max-requests-jitter", "1.5"], "--max-requests-jitter: expected an integer >= 0"),
        (["--timeout", "0"], "--timeout: expected a number > 0, got '0'"),
        (["--boot-timeout", "inf"], "--boot-timeout: expected a number > 0, got 'inf'"),
        (["--graceful-timeout", "-1"], "--graceful-timeout: expected a number >= 0, got '-1'"),
        (["--keep-alive", "5s"], "--keep-alive: expected a number >= 0, got '5s'"),
        (["--backlog", "0"], "--backlog: expected an integer >= 1, got '0'"),
        (["--threads", "-2"], "--threads: expected an integer >= 0, got '-2'"),
        (["--loop", "tokio"], "--loop: expected one of uvloop, asyncio, got 'tokio'"),
        (["--log-level", "INFO"], "--log-level: expected one of debug, info, warning"),
        (["--bind", "8060"], "--bind: missing port in '8060'"),
        (["-b", "a:1", "-b", "a:1"], "--bind: duplicate address 'tcp://a:1'"),
        (["--name", "a/b"], "--name: expected letters, digits"),
        (["--pid", ""], "--pid: expected a path, got ''"),
        (["--user", "no-such-user-xyz"], "--user: no such user 'no-such-user-xyz'"),
        (["--user", "3999999"], "--user: no such user id 3999999"),
        (["--group", "no-such-group-xyz"], "--group: no such group 'no-such-group-xyz'"),
        (["--certfile", "/no/such.pem"], "--certfile: no such file: '/no/such.pem'"),
        (["app"], "APP: expected MODULE:ATTRIBUTE, e.g. myapp:Consumer, got 'app'"),
        (["a:b", "c:d"], "unrecognized arguments: c:d"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--work", "2"], "unrecognized arguments: --work"),  # no abbreviations
        (["--wsgi", "--http", "a:b"], "--wsgi/--http: choose one"),
        (["--wsgi"], "--wsgi: needs an APP (MODULE:ATTRIBUTE)"),
        (["--http"], "--http: needs an APP (MODULE:ATTRIBUTE)"),
    ],
)
def test_bad_flags_give_one_line(argv: list[str], message: str) -> None:
    assert error_of(argv).startswith(message)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    cert, key = write(tmp_path / "c.pem", "x"), write(tmp_path / "k.pem", "x")
    config = load_config(["--certfile", cert, "--keyfile", key])
    assert (config.certfile, config.keyfile) == (cert, key)
    assert error_of(["--certfile", cert]) == (
        "--certfile/--keyfile: TLS needs both, only --certfile given"
    )
    assert error_of(["--keyfile", key]).endswith("only --keyfile given")


def test_user_and_group_by_name() -> None:
    root_user, root_group = pwd.getpwuid(0).pw_name, grp.getgrgid(0).gr_name
    config = load_config(["--user", root_user, "--group", root_group])
    assert (config.user, config.group) == (0, 0)


def test_flags_can_be_negated() -> None:
    assert not load_config(["--preload", "--no-preload"]).preload


def test_help_is_generated_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    text = build_parser().format_help()
    for spec in SETTINGS:
        for flag in spec.flags:
            assert flag in text
    assert "(default: 127.0.0.1:8060) [restart]" in " ".join(text.split())
    assert "[tool.pulsar_arbiter]" in text
    with pytest.raises(SystemExit) as info:
        load_config(["--help"])
    assert info.value.code == 0
    assert "--max-requests-jitter" in capsys.readouterr().out


# -- the TOML file ----------------------------------------------------------------------------


def test_toml_file_and_precedence(tmp_path: Path) -> None:
    file = write(
        tmp_path / "pa.toml",
        """
        app = "myapp:Consumer"
        bind = ["127.0.0.1:9000", "unix:/tmp/x.sock"]
        workers = 3
        max_requests = 1000
        timeout = 10
        preload = true
        log_level = "warning"
        """,
    )
    config = load_config(["--config", file])
    assert config.config == file
    assert config.app == "myapp:Consumer"
    assert [str(spec) for spec in config.bind] == ["tcp://127.0.0.1:9000", "unix:/tmp/x.sock"]
    assert (config.workers, config.max_requests, config.timeout) == (3, 1000, 10.0)
    assert config.preload and config.log_level == "warning"

    flags = load_config(
        ["other:App", "-c", file, "-w", "5", "-b", ":1", "--no-preload", "--timeout", "2"]
    )
    assert flags.app == "other:App"
    assert [str(spec) for spec in flags.bind] == ["tcp://0.0.0.0:1"]  # flags replace the list
    assert (flags.workers, flags.timeout, flags.preload) == (5, 2.0, False)
    assert flags.max_requests == 1000  # untouched by flags: from the file


def test_pyproject_table(tmp_path: Path) -> None:
    file = write(
        tmp_path / "pyproject.toml",
        """
        [project]
        name = "x"

        [tool.pulsar_arbiter]
        workers = 2
        bind = "[::1]:8000"
        """,
    )
    config = load_config(["--config", file])
    assert config.workers == 2
    assert config.bind == (BindSpec("tcp", host="::1", port=8000),)


def test_pyproject_without_table(tmp_path: Path) -> None:
    file = write(tmp_path / "pyproject.toml", "[project]\nname = 'x'\n")
    assert error_of(["-c", file]) == f"{file}: no [tool.pulsar_arbiter] table"


def test_tool_table_in_any_file(tmp_path: Path) -> None:
    file = write(tmp_path / "settings.toml", "[tool.pulsar_arbiter]\nworkers = 7\n")
    assert read_config_file(file) == {"workers": 7}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("max_request = 5", "unknown setting 'max_request' (did you mean 'max_requests'?)"),
        ("max-requests = 5", "unknown setting 'max-requests' (did you mean 'max_requests'?)"),
        ("zzz = 1", "unknown setting 'zzz'"),
        ("[server]\nworkers = 2", "unknown setting 'server'"),
        ("workers = 0", "workers: expected an integer >= 1, got 0"),
        ("workers = '0'", "workers: expected an integer >= 1, got '0'"),
        ("workers = true", "workers: expected an integer >= 1, got True"),
        ("timeout = 'soon'", "timeout: expected a number > 0, got 'soon'"),
        ("preload = 'yes'", "preload: expected true or false, got 'yes'"),
        ("bind = []", "bind: expected at least one address"),
        ("bind = [80]", "bind: expected an address, got 80"),
        ("bind = ['x']", "bind: missing port in 'x'"),
        ("loop = 'tokio'", "loop: expected one of uvloop, asyncio, got 'tokio'"),
        ("config = 'other.toml'", "'config' cannot be set in a config file"),
        ("workers = ", "invalid TOML: Invalid value (at line 1, column 11)"),
    ],
)
def test_bad_toml_names_file_and_key(tmp_path: Path, content: str, message: str) -> None:
    file = write(tmp_path / "pa.toml", content + "\n")
    assert error_of(["--config", file]).startswith(f"{file}: {message}")


def test_unknown_key_without_a_close_match_has_no_hint(tmp_path: Path) -> None:
    file = write(tmp_path / "pa.toml", "[server]\nworkers = 2\n")
    assert error_of(["--config", file]) == f"{file}: unknown setting 'server'"


def test_unreadable_config_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    assert error_of(["--config", missing]) == (
        f"--config: cannot read {missing!r}: No such file or directory"
    )


def test_toml_integers_for_float_settings(tmp_path: Path) -> None:
    file = write(tmp_path / "pa.toml", "keep_alive = 0\ngraceful_timeout = 1.5\n")
    config = load_config(["-c", file])
    assert config.keep_alive == 0.0 and isinstance(config.keep_alive, float)
    assert config.graceful_timeout == 1.5


# -- the Config object ---------------------------------------------------------------------------


def test_config_is_frozen_and_replace_validates() -> None:
    config = load_config(["-w", "2"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 3  # type: ignore[misc]
    bigger = config.replace(workers=4, bind=["127.0.0.1:1"])
    assert (bigger.workers, config.workers) == (4, 2)
    assert bigger.bind == (BindSpec("tcp", host="127.0.0.1", port=1),)
    with pytest.raises(ConfigError, match=r"^--workers: expected an integer >= 1, got 0$"):
        config.replace(workers=0)
    with pytest.raises(ConfigError, match="--wsgi: needs an APP"):
        config.replace(wsgi=True)
    assert config.replace(pid=Path("/tmp/p.pid")).pid == "/tmp/p.pid"


def test_as_dict_is_json_ready() -> None:
    config = load_config(["a:b", "-b", "[::1]:1", "-b", "unix:/tmp/s"])
    data = config.as_dict()
    assert list(data) == [spec.name for spec in SETTINGS]
    assert data["bind"] == ["tcp://[::1]:1", "unix:/tmp/s"]
    assert json.loads(json.dumps(data)) == data
    assert Config(**data) == config


def test_unreloadable_changes() -> None:
    old = Config()
    new = old.replace(workers=old.workers + 1, bind=[":1"], backlog=10, log_level="debug")
    assert unreloadable_changes(old, new) == ["bind", "backlog"]
    assert unreloadable_changes(old, old) == []


def test_default_control_socket() -> None:
    assert default_control_socket("web", {"XDG_RUNTIME_DIR": "/run/user/1000"}) == (
        "/run/user/1000/pulsar_arbiter/web.sock"
    )
    expected = f"/tmp/pulsar_arbiter-{os.getuid()}/web.sock"
    assert default_control_socket("web", {}) == expected
    assert default_control_socket("web", {"XDG_RUNTIME_DIR": ""}) == expected


def test_control_socket_path_follows_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/7")
    assert load_config(["--name", "api"]).control_socket_path == (
        "/run/user/7/pulsar_arbiter/api.sock"
    )


def test_config_error_is_one_line() -> None:
    assert str(ConfigError("a\n  b\n")) == "a b"


# -- the HTTP limits, and settings checked together -------------------------------------------

LIMITS = {
    "limit_request_line": "max_request_line",
    "limit_request_fields": "max_headers",
    "limit_request_field_size": "max_header_size",
    "limit_request_body": "max_body",
}


def test_http_limit_defaults_are_the_http_layers() -> None:
    from pulsar_arbiter.http import Limits

    config = Config()
    for setting, field in LIMITS.items():
        assert getattr(config, setting) == getattr(Limits(), field)


def test_http_limits_by_flag_and_toml(tmp_path: Path) -> None:
    from pulsar_arbiter.runtime.apps import http_limits

    argv = ["app:raw", "--http", "--limit-request-body", "10485760", "--limit-request-line", "100"]
    config = load_config(argv)
    limits = http_limits(config)
    assert (limits.max_body, limits.max_request_line) == (10 * 1024 * 1024, 100)
    file = write(tmp_path / "c.toml", "wsgi = true\nlimit_request_fields = 20\n")
    assert http_limits(load_config(["app:wsgi", "-c", file])).max_headers == 20
    big = http_limits(load_config(["app:raw", "--http", "--limit-request-field-size", "200000"]))
    assert big.max_head_size >= 200000 + big.max_request_line, "one longest field fits the head"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["app:raw", "--http", "--threads", "4"], "--threads: only with --wsgi"),
        (["app:Consumer", "--threads", "2"], "--threads: only with --wsgi"),
        (["app:C", "--limit-request-body", "5"], "--limit-request-body: only with --wsgi or"),
        (["app:raw", "--http", "--limit-request-body", "0"], "--limit-request-body: expected"),
        (["app:raw", "--http", "--limit-request-fields", "x"], "--limit-request-fields: expected"),
    ],
)
def test_settings_checked_together(argv: list[str], message: str) -> None:
    assert error_of(argv).startswith(message)


def test_threads_with_wsgi_is_fine() -> None:
    assert load_config(["app:wsgi", "--wsgi", "--threads", "4"]).threads == 4


def test_ctl_reads_its_flags_from_the_registry() -> None:
    import argparse

    from pulsar_arbiter.ops.config import add_arguments, convert_given

    parser = argparse.ArgumentParser()
    add_arguments(parser, ("control_socket", "name"))
    given = vars(parser.parse_args(["--name", "web"]))
    assert convert_given(given, ("control_socket", "name")) == {"name": "web"}
    bad = vars(parser.parse_args(["--name", "a/b"]))
    with pytest.raises(ConfigError, match="--name: expected letters"):
        convert_given(bad, ("name",))
    assert "--control-socket" in parser.format_help()


def test_gunicorn_log_file_flags_are_aliases() -> None:
    """gunicorn's ``--access-logfile -`` and ``--error-logfile`` work as they do there."""
    assert load_config(["--access-logfile", "-"]).access_log == "-"
    assert load_config(["--error-logfile", "-"]).error_log == "-"
    cfg = load_config(["--access-log", "-", "--error-log", "-"])
    assert (cfg.access_log, cfg.error_log) == ("-", "-")


def test_gunicorn_access_logformat_is_an_alias(capsys: pytest.CaptureFixture[str]) -> None:
    """gunicorn's ``--access-logformat`` sets ``--access-log-format``; a bad value names
    our flag, and --help lists both."""
    fmt = '%(h)s "%(r)s" %(s)s'
    assert load_config(["--access-logformat", fmt]).access_log_format == fmt
    assert load_config(["--access-log-format", fmt]).access_log_format == fmt
    assert error_of(["--access-logformat", "%(h"]).startswith("--access-log-format")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "--access-log-format FORMAT, --access-logformat FORMAT" in capsys.readouterr().out
