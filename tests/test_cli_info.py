"""``--version`` and ``--check-config``, as gunicorn users run them in CI: listed by
``--help``, run as ``python -m pulsar_arbiter`` in a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime import REPO_ROOT

pytestmark = pytest.mark.timeout(60)


def run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *([path] if path else [])])}
    return subprocess.run(
        [sys.executable, "-m", "pulsar_arbiter", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )


def test_help_lists_version_and_check_config() -> None:
    done = run("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--version print our version" in text
    assert "--check-config validate the settings" in text


def test_version_names_ours_python_the_loop_and_the_core() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stderr == ""
    (line,) = done.stdout.splitlines()
    assert line.startswith("pulsar_arbiter ")
    for part in ("Python ", "uvloop ", "core: httptools "):
        assert part in line, line


def test_check_config_passes_a_good_config() -> None:
    done = run("testapps.whoami:WhoAmI", "--workers", "2", "--check-config")
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert "valid" in done.stdout


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()
    assert line.startswith("pulsar_arbiter: error: ")
    return line


def test_check_config_fails_on_a_bad_setting() -> None:
    line = error_line(run("testapps.whoami:WhoAmI", "--workers", "zero", "--check-config"))
    assert "--workers" in line and "zero" in line


def test_check_config_fails_on_an_app_that_does_not_import() -> None:
    line = error_line(run("--check-config", "testapps.faulty_import:X"))
    assert "faulty_import: this module fails to import on purpose" in line


def test_check_config_fails_on_a_hooks_module_that_does_not_import(tmp_path: Path) -> None:
    (tmp_path / "brokenhooks.py").write_text("import no_such_db_driver_xyz\n")
    args = ("testapps.whoami:WhoAmI", "--hooks", "brokenhooks", "--check-config")
    line = error_line(run(*args, cwd=tmp_path))
    assert "cannot import 'brokenhooks'" in line and "no_such_db_driver_xyz" in line
