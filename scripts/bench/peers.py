"""Everything the comparison needs that is not ours: the peers' venv, wrk and
nginx, the nginx config, and the facts about the machine and versions.

Why a separate venv (``scripts/bench/.peers/``, git-ignored): uvicorn,
gunicorn, granian and matplotlib must never become dependencies of the
project, nor change the packages our own servers run with.  The venv is made
from the same CPython as the one running the benchmark, so interpreter
differences never show up as server differences.  It is reused while its
recorded requirement list matches, so a second run costs no install.

wrk and nginx come from Debian (``apt-get install wrk nginx-light``) when
missing: they are C programs, no PyPI package provides them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import string
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"
NGINX_TEMPLATE = HERE / "nginx.conf.template"
REQUIREMENTS = [
    "uvicorn[standard]",
    "wsproto",
    "gunicorn",
    "granian",
    "uvicorn-worker",
    "matplotlib",
]
PEER_PACKAGES = [
    "uvicorn",
    "gunicorn",
    "granian",
    "uvicorn-worker",
    "uvloop",
    "httptools",
    "websockets",
    "wsproto",
    "matplotlib",
]
OUR_PACKAGES = ["pulsar-arbiter", "uvloop", "httptools", "psutil"]
APT_PACKAGES = {"wrk": "wrk", "nginx": "nginx-light"}
PIP_TIMEOUT = 900.0
APT_TIMEOUT = 600.0
QUICK_TIMEOUT = 30.0

Log = Callable[[str], None]


class SetupError(RuntimeError):
    """A tool or the peers' venv could not be made ready."""


# ------------------------------------------------------------------ commands
def run_checked(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run a setup command to completion (bounded), return stdout, raise on failure.

    subprocess.run kills and reaps the child itself when the timeout expires
    or anything else interrupts the wait.
    """
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"{' '.join(argv)} took more than {timeout:.0f} s") from exc
    except OSError as exc:
        raise SetupError(f"cannot run {argv[0]}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-3000:]
        raise SetupError(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def output_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    """First line a version command prints (stdout or stderr), '' if it fails."""
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=QUICK_TIMEOUT,
            env={**os.environ, **(env or {})},
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0].strip() if text else ""


# ------------------------------------------------------------- system tools
def ensure_system_tools(log: Log) -> dict[str, str]:
    """Make sure wrk and nginx are on PATH (apt-get as root if not).

    Returns the path of each.  Debian's nginx package may try to start the
    system service on install; on machines without an init system it does
    not, and the benchmark never uses that instance either way.
    """
    missing = [pkg for tool, pkg in APT_PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0:
            raise SetupError(f"missing {missing}; install them with apt-get (needs root)")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        log(f"installing {' '.join(missing)} with apt-get")
        run_checked(["apt-get", "update"], APT_TIMEOUT, env)
        run_checked(
            ["apt-get", "install", "-y", "--no-install-recommends", *missing], APT_TIMEOUT, env
        )
    paths = {tool: shutil.which(tool) for tool in APT_PACKAGES}
    if not all(paths.values()):
        raise SetupError(f"still missing after apt-get: {paths}")
    # nginx lives in /usr/sbin, which a non-login PATH may lack: use full paths.
    return {tool: str(path) for tool, path in paths.items()}


# ---------------------------------------------------------------- peers venv
@dataclass(frozen=True)
class Peers:
    """The peers' venv: where its programs are, and what it can run."""

    root: Path
    uvicorn_worker_class: str  # gunicorn -k value

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)


def ensure_peers(log: Log, root: Path = PEERS_DIR) -> Peers:
    """Create (or reuse) the peers' venv and install the peer servers into it.

    ``sys.executable -m venv`` builds on the base interpreter behind the
    project venv: the peers run on the very same CPython build as our servers.
    A marker file records the requirement list it was installed from; a
    different list (this script changed) or a failed import reinstalls.
    """
    marker = root / "bench-requirements.json"
    wanted = json.dumps(REQUIREMENTS)
    python = root / "bin" / "python"
    if not (python.exists() and marker.exists() and marker.read_text() == wanted):
        # An existing venv is topped up (pip installs only what is missing); one
        # whose interpreter no longer runs is made again.
        usable = python.exists() and _runs(python)
        verb = "updating" if usable else "creating"
        log(f"{verb} the peers' venv in {root} (pip install {' '.join(REQUIREMENTS)})")
        if not usable:
            if root.exists():
                shutil.rmtree(root)
            run_checked([sys.executable, "-m", "venv", str(root)], PIP_TIMEOUT)
        run_checked(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                *REQUIREMENTS,
            ],
            PIP_TIMEOUT,
        )
        marker.write_text(wanted)
    check = "import uvicorn, gunicorn, granian, matplotlib, uvloop, httptools, websockets, wsproto"
    run_checked([str(python), "-c", check], QUICK_TIMEOUT)
    # uvicorn.workers is deprecated (and may be gone); uvicorn-worker replaces it.
    try:
        run_checked([str(python), "-c", "import uvicorn_worker"], QUICK_TIMEOUT)
        worker_class = "uvicorn_worker.UvicornWorker"
    except SetupError:
        worker_class = "uvicorn.workers.UvicornWorker"
    return Peers(root=root, uvicorn_worker_class=worker_class)


def _runs(python: Path) -> bool:
    try:
        run_checked([str(python), "-c", "pass"], QUICK_TIMEOUT)
    except SetupError:
        return False
    return True


# --------------------------------------------------------------------- nginx
def nginx_argv(nginx: str, tmp: Path, port: int, workers: int) -> list[str]:
    """Write the run's nginx.conf into ``tmp`` and return the command to run it.

    ``-p`` makes ``tmp`` the prefix, ``-e`` moves even the start-up error log
    there (before the config is read nginx would open its compiled-in path),
    and ``daemon off`` keeps the master in the foreground so it is the pid we
    started, measured, and stop.
    """
    text = string.Template(NGINX_TEMPLATE.read_text()).substitute(
        tmp=str(tmp), port=port, workers=workers
    )
    conf = tmp / "nginx.conf"
    conf.write_text(text)
    return [
        nginx,
        "-p",
        str(tmp),
        "-c",
        str(conf),
        "-e",
        str(tmp / "error.log"),
        "-g",
        "daemon off;",
    ]


# --------------------------------------------------------------------- facts
def cpu_model() -> str:
    """'model name' from /proc/cpuinfo (the first core's)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def our_versions() -> dict[str, str]:
    """Versions of the packages our servers and the bare rows run with."""
    found: dict[str, str] = {}
    for name in OUR_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def peer_versions(peers: Peers) -> dict[str, str]:
    """Versions in the peers' venv, read by its own interpreter."""
    code = (
        "import json, importlib.metadata as m\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return 'not installed'\n"
        f"print(json.dumps({{n: v(n) for n in {PEER_PACKAGES!r}}}))"
    )
    try:
        result: dict[str, str] = json.loads(
            run_checked([str(peers.python), "-c", code], QUICK_TIMEOUT)
        )
    except (SetupError, ValueError):
        return {}
    return result


def machine_facts(tools: dict[str, str], peers: Peers | None) -> dict[str, object]:
    """What the report states about where and with what it was measured."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "ours": our_versions(),
        "peers": peer_versions(peers) if peers else {},
        "nginx": output_of([tools["nginx"], "-v"]) if "nginx" in tools else "",
        "wrk": output_of([tools["wrk"], "-v"]) if "wrk" in tools else "",
        "gcc": output_of(["gcc", "--version"]),
    }
