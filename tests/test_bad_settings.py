"""Every setting, given a wrong type or an out-of-range value, in a flag or in TOML (a
``--config`` file or the ``[tool.pulsar_arbiter]`` table of a pyproject.toml): exit 2 with
one line naming it, never a traceback.

The registry is walked generically: a setting added to ``config.py`` is covered without
touching this file. Its kind (flag, integer, number, text) is found by probing its
converter, and each kind gets its own bad values plus the ones bad for every setting.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pulsar_arbiter.ops.config import SETTINGS, ConfigError, Setting, load_config
from tests.runtime import REPO_ROOT

HUGE = [10**20, -(10**20), 2**63, 2**64, -(2**63) - 1, 10**400]

# TOML values that no setting accepts, whatever its kind.
BAD_FOR_ALL: list[Any] = [
    *HUGE,
    math.nan,
    math.inf,
    -math.inf,
    -1.5,
    "",
    {},
    {"a": {"b": {"c": 1}}},
    [{"a": 1}],
    [[1, [2]]],
    datetime.datetime(2024, 1, 2, 3, 4, 5),
    datetime.date(2024, 1, 2),
]


def accepts(spec: Setting, value: object) -> bool:
    try:
        spec.convert(value)
    except ValueError:
        return False
    return True


def kind_of(spec: Setting) -> str:
    if spec.kind == "flag":
        return "flag"
    if accepts(spec, True) and accepts(spec, "false"):  # a flag taking true or false
        return "boolean"
    if accepts(spec, 1) and not accepts(spec, 1.5):
        return "integer"
    if accepts(spec, 1.5):
        return "number"
    return "text"


# Per kind, values bad in TOML (any type) and in flags (strings only).
BAD_TOML: dict[str, list[Any]] = {
    "flag": ["yes", 1, 0, "true", [True]],
    "boolean": ["yes", 1, 0, 1.5, "maybe", [True]],
    "integer": ["abc", "1.5", 1.5, True, False, -1, "-1", "99999999999999999999", "0x10", "1e3"],
    "number": ["abc", True, False, -1, "-1", "nan", "inf", "-inf", 1e300, "1e400", "9" * 5000],
    "text": [True, False, 0, 1, 1.5, "\0", [""], ["a", 1]],
}
BAD_FLAG: dict[str, list[str]] = {
    "boolean": ["", "yes", "2", "maybe", "truth"],
    "integer": ["", "abc", "1.5", "-1", "99999999999999999999", "9" * 5000, "1e3", " "],
    "number": ["", "abc", "-1", "nan", "inf", "-inf", "1e300", "9" * 5000],
    "text": [""],
}


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_cases() -> list[tuple[str, Any]]:
    cases = []
    for spec in SETTINGS:
        if spec.name == "config":  # cannot be set in a file at all (tested in test_config)
            continue
        kind = kind_of(spec)
        for value in [*BAD_FOR_ALL, *BAD_TOML[kind]]:
            # A non-string may be a fine value of a text setting (a path named "0"...).
            if kind != "text" or not accepts(spec, value) or not isinstance(value, str):
                cases.append((spec.name, value))
    return cases


def flag_cases() -> list[tuple[str, list[str]]]:
    cases = []
    for spec in SETTINGS:
        kind = kind_of(spec)
        if kind == "flag":
            flag = spec.flags[-1]
            cases += [(spec.name, [f"{flag}=yes"]), (spec.name, [f"{flag}=1"])]
            continue
        for text in BAD_FLAG[kind]:
            if spec.kind == "positional":
                argv = [text]
            elif spec.name == "config":
                continue
            else:
                argv = [spec.flags[-1], text]
            cases.append((spec.name, argv))
    return cases


def check_error(exc: ConfigError, *names: str) -> None:
    message = str(exc)
    assert message and "\n" not in message and "Traceback" not in message
    assert any(name in message for name in names), (names, message)


def names_of(spec: Setting) -> tuple[str, ...]:
    return (spec.name, spec.option, *spec.flags)


BY_NAME = {spec.name: spec for spec in SETTINGS}


@pytest.mark.parametrize(("name", "value"), toml_cases(), ids=repr)
def test_toml_bad_value(tmp_path: Path, name: str, value: Any) -> None:
    spec = BY_NAME[name]
    line = f"{name} = {toml_value(value)}\n"
    config = tmp_path / "bad.toml"
    config.write_text(line)
    with pytest.raises(ConfigError) as exc:
        load_config(["--config", str(config)])
    check_error(exc.value, *names_of(spec))
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f"[tool.pulsar_arbiter]\n{line}")
    with pytest.raises(ConfigError) as exc:
        load_config(["--config", str(pyproject)])
    check_error(exc.value, *names_of(spec))


@pytest.mark.parametrize(("name", "argv"), flag_cases(), ids=repr)
def test_flag_bad_value(name: str, argv: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(argv)
    check_error(exc.value, *names_of(BY_NAME[name]), "unrecognized arguments")


def test_every_setting_is_covered() -> None:
    """Each setting has bad values of its kind in both sources (flags: all but config)."""
    toml = {name for name, _ in toml_cases()}
    flags = {name for name, _ in flag_cases()}
    names = {spec.name for spec in SETTINGS}
    assert toml == names - {"config"}
    assert flags == names - {"config"}


def test_huge_integers_are_refused_by_every_integer_setting() -> None:
    """Found in the field: ``backlog = 99999999999999999999`` passed validation and broke
    listen() with a traceback. No integer setting may accept a value beyond a C long."""
    integers = [spec for spec in SETTINGS if kind_of(spec) == "integer"]
    assert {"backlog", "workers", "threads", "max_requests"} <= {s.name for s in integers}
    for spec in integers:
        for value in HUGE:
            assert not accepts(spec, value), (spec.name, value)
            assert not accepts(spec, str(value)), (spec.name, value)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI in its own session; if it does not exit in time (it took the settings
    and serves), its whole process group is killed."""
    argv = [sys.executable, "-m", "pulsar_arbiter", *args]
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"}
    with subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise AssertionError(f"{argv} did not exit: it accepted the settings") from None
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


@pytest.mark.parametrize(
    ("toml", "args"),
    [
        ("backlog = 99999999999999999999", []),
        ("workers = 99999999999999999999", []),
        ("keep_alive = 1e300", []),
        ("timeout = nan", []),
        ("max_requests = -1", []),
        ("bind = {host = 'x'}", []),
        ("[bind]\nhost = 'x'", []),
        ("user = ''", []),
        ("", ["--backlog", "99999999999999999999"]),
        ("", ["--workers", "9" * 5000]),
        ("", ["--graceful-timeout", "inf"]),
        ("", ["--bind", ""]),
        ("", ["--error-log", "/nonexistent/dir/error.log"]),
    ],
)
@pytest.mark.parametrize("table", ["file", "pyproject"])
def test_cli_exits_2_with_one_line(tmp_path: Path, toml: str, args: list[str], table: str) -> None:
    if table == "file":
        config = tmp_path / "server.toml"
        config.write_text(toml + "\n")
    else:
        config = tmp_path / "pyproject.toml"
        toml = toml.replace("[bind]", "[tool.pulsar_arbiter.bind]")
        config.write_text(f"[project]\nname = 'x'\n\n[tool.pulsar_arbiter]\n{toml}\n")
    control = str(tmp_path / "ctl.sock")
    result = run_cli(
        "--config",
        str(config),
        "--control-socket",
        control,
        "--bind",
        "127.0.0.1:0",
        *args,
        cwd=tmp_path,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("pulsar_arbiter: error: "), result.stderr
    assert result.stdout == ""
