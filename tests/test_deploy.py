"""Issue 12 for real: /health and /metrics, --drain-delay, USR2, systemd, the examples.

Every test runs the real ``python -m pulsar_arbiter`` (the harness of tests/runtime.py),
talks to it over loopback and judges it from outside: the endpoint with a plain HTTP
client, Prometheus's own parser for /metrics, real signals, a real datagram socket for
``sd_notify`` and ``systemd-socket-activate`` (Debian package ``systemd``) for socket
activation. Every process is stopped by pid (the harness; an arbiter started by USR2 is
stopped here), and the leak check of the runtime tests applies.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime import (
    HOST,
    REPO_ROOT,
    Arbiter,
    Load,
    exchange,
    free_port,
    reap_orphans,
    report,
    wait_until,
    whoami,
)
from tests.test_runtime import no_leaks

__all__ = ["no_leaks"]  # the autouse leak check of the runtime tests

pytestmark = pytest.mark.timeout(40)

DEPLOY = REPO_ROOT / "examples" / "deploy"


def get(port: int, path: str) -> tuple[int, str]:
    """One GET on the metrics bind: (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5.0)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def health_if(port: int, status: int) -> str | None:
    """The /health body when it answers ``status``, else None."""
    answer, body = get(port, "/health")
    return body if answer == status else None


def scrape_when(port: int, name: str, value: float) -> dict[str, float] | None:
    """A scrape in which ``name`` is ``value``, else None."""
    samples = scrape(port)
    return samples if samples.get(name) == value else None


def scrape(port: int) -> dict[str, float]:
    """Every sample of /metrics, parsed by prometheus_client: ``name{labels}`` -> value."""
    status, text = get(port, "/metrics")
    assert status == 200
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@contextlib.contextmanager
def arbiter(tmp_path: Path, *args: str, **kw: Any) -> Iterator[Arbiter]:
    home = tmp_path / f"arbiter-{len(list(tmp_path.iterdir()))}"
    home.mkdir()
    with Arbiter(home, *args, **kw) as started:
        try:
            yield started
        finally:
            print(started.log()[-6000:])


def stop_by_pid(pid: int, timeout: float = 10.0) -> None:
    """TERM an arbiter we did not start ourselves (a USR2 one), wait, KILL if needed."""
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        children = proc.children()
        proc.terminate()
        _, alive = psutil.wait_procs([proc, *children], timeout=timeout)
        for left in alive:
            with contextlib.suppress(psutil.Error):
                left.kill()
    reap_orphans()


# -- /health and /metrics ------------------------------------------------------------------


def worker_series(scraped: dict[str, float]) -> list[str]:
    return [n for n in scraped if n.startswith("pulsar_arbiter_worker_requests_total{")]


def settled(scraped: dict[str, float] | None) -> dict[str, float] | None:
    """The scrape once no worker is retiring: the replaced one's series is gone."""
    if scraped is None or len(worker_series(scraped)) != 2:
        return None
    return scraped if scraped.get("pulsar_arbiter_workers{phase=ready}") == 2 else None


def test_metrics_parse_and_counters_never_decrease_across_recycles(tmp_path: Path) -> None:
    mport = free_port()
    args = ("--metrics-bind", f"{HOST}:{mport}", "--max-requests", "25", "--timeout", "1")
    with arbiter(tmp_path, "testapps.whoami:WhoAmI", *args) as arb:
        arb.wait_serving()
        assert get(mport, "/health") == (200, "ok: 2/2 workers ready\n")
        total = 1000
        seen: list[dict[str, float]] = []
        with Load(arb.port, concurrency=4, total=total) as load:
            while load.running:
                seen.append(scrape(mport))
                time.sleep(0.05)
            result = load.join(30.0)
        assert result.failed == 0, result
        final = wait_until(
            lambda: settled(scrape_when(mport, "pulsar_arbiter_requests_total", total)),
            15.0,
            "every request counted in /metrics, the last recycle over",
        )
        seen.append(final)
    counters = [name for name in final if name.endswith("_total") and "worker=" not in name]
    assert "pulsar_arbiter_received_bytes_total" in counters
    for name in counters:
        values = [s[name] for s in seen if name in s]
        assert values == sorted(values), f"{name} went backwards: {values}"
    recycles = final["pulsar_arbiter_recycles_total"]
    assert recycles >= 2, final
    assert final["pulsar_arbiter_worker_exits_total{reason=max_requests}"] == recycles
    assert final["pulsar_arbiter_received_bytes_total"] >= total * len("c0-1\n")
    assert final["pulsar_arbiter_sent_bytes_total"] > final["pulsar_arbiter_received_bytes_total"]
    assert final["process_resident_memory_bytes"] > 0, "the arbiter's process_* metrics"
    assert len(worker_series(final)) == 2, worker_series(final)
    assert final["pulsar_arbiter_workers{phase=ready}"] == 2
    report("metrics_across_recycles", scrapes=len(seen), recycles=recycles, requests=total)


def test_http_request_durations_and_the_endpoint_answers(tmp_path: Path) -> None:
    mport = free_port()
    args = ("--http", "--metrics-bind", f"{HOST}:{mport}", "--timeout", "1", "--workers", "1")
    with arbiter(tmp_path, "testapps.hello:raw", *args, workers=1) as arb:
        arb.wait_serving()
        for _ in range(5):
            conn = http.client.HTTPConnection(HOST, arb.port, timeout=5.0)
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"Hello, World!"
            conn.close()
        final = wait_until(
            lambda: scrape_when(mport, "pulsar_arbiter_request_duration_seconds_count", 5),
            10.0,
            "5 request durations",
        )
        assert final["pulsar_arbiter_request_duration_seconds_bucket{le=+Inf}"] == 5
        assert 0 < final["pulsar_arbiter_request_duration_seconds_sum"] < 5
        assert get(mport, "/nope")[0] == 404
        with socket.create_connection((HOST, mport), timeout=5.0) as sock:
            sock.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 405 ")
        with socket.create_connection((HOST, mport), timeout=5.0) as sock:
            sock.sendall(b"garbage\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400 ")


def test_health_turns_503_before_any_worker_stops_accepting(tmp_path: Path) -> None:
    mport = free_port()
    drain = 1.5
    args = ("--metrics-bind", f"{HOST}:{mport}", "--drain-delay", str(drain))
    with arbiter(tmp_path, "testapps.whoami:WhoAmI", *args) as arb:
        arb.wait_serving()
        port, workers = arb.port, arb.worker_pids()
        arb.send(signal.SIGTERM)
        termed = time.monotonic()
        why = wait_until(lambda: health_if(mport, 503), 1.0, "503")
        seen_503 = time.monotonic() - termed
        assert why.startswith("stopping (graceful)"), why
        # Health says 503, and every worker still accepts: new connections are served.
        served = {whoami(port) for _ in range(10)}
        assert served <= workers
        assert "stopping worker" not in arb.log(), "a worker was stopped during the drain"

        def refused() -> bool:
            try:
                whoami(port)
            except ConnectionRefusedError:
                return True
            return False

        wait_until(refused, drain + 5.0, "new connections refused after the drain", poll=0.02)
        refused_after = time.monotonic() - termed
        assert arb.wait_exit(10.0) == 0
    assert seen_503 < 0.5 and refused_after >= drain, (seen_503, refused_after)
    report(
        "drain_delay", health_503_after=round(seen_503, 3), refused_after=round(refused_after, 3)
    )


# -- USR2 ------------------------------------------------------------------------------------


def arbiter_pid(arb: Arbiter) -> int:
    return int(arb.stats()["arbiter"]["pid"])


def new_arbiter(arb: Arbiter) -> int | None:
    """The pid of the arbiter answering the control socket, if not the one started."""
    pid = arbiter_pid(arb)
    return pid if pid != arb.pid else None


def test_usr2_hands_over_to_a_new_arbiter_under_load(tmp_path: Path) -> None:
    pid_file = tmp_path / "arbiter.pid"
    mport = free_port()
    args = ("--pid", str(pid_file), "--metrics-bind", f"{HOST}:{mport}")
    new_pid = None
    with arbiter(tmp_path, "testapps.whoami:WhoAmI", *args) as arb:
        try:
            arb.wait_serving()
            old_workers = arb.worker_pids()
            with Load(arb.port, concurrency=4) as load:
                wait_until(lambda: load.ok >= 50, 10.0, "load running")
                arb.send(signal.SIGUSR2)
                new_pid = wait_until(lambda: new_arbiter(arb), 15.0, "the new arbiter")
                arb.remember([new_pid])
                assert arb.wait_exit(15.0) == 0, "the old arbiter drains and exits 0"
                ok_at_exit = load.ok
                wait_until(lambda: load.ok >= ok_at_exit + 50, 10.0, "load served by the new one")
                result = load.join(10.0)
            assert result.failed == 0, result
            new_workers = {p.pid for p in psutil.Process(new_pid).children()}
            assert whoami(arb.port) in new_workers and not new_workers & old_workers
            assert not any(arb.running(pid) for pid in old_workers)
            assert pid_file.read_text().strip() == str(new_pid)
            assert not Path(f"{pid_file}.oldbin").exists()
            assert get(mport, "/health")[0] == 200, "the metrics socket was handed over too"
            assert "USR2: the new arbiter" in arb.log()
            report("usr2_under_load", sent=result.sent, failed=result.failed)
        finally:
            if new_pid is not None:
                stop_by_pid(new_pid)


def test_a_failed_new_arbiter_leaves_the_old_one_serving(tmp_path: Path) -> None:
    config = tmp_path / "pulsar.toml"
    config.write_text("workers = 2\n")
    pid_file = tmp_path / "arbiter.pid"
    args = ("--config", str(config), "--pid", str(pid_file))
    with arbiter(tmp_path, "testapps.whoami:WhoAmI", *args) as arb:
        arb.wait_serving()
        config.write_text("workers = 'many'\n")  # the new arbiter cannot start
        arb.send(signal.SIGUSR2)
        wait_until(lambda: "failed to start" in arb.log(), 15.0, "the failure logged")
        assert "serves on" in arb.log()
        assert arb.exited() is None
        # The old arbiter closed its control socket for the new one and reopens it now
        # (until then the control socket is missing: wait_until counts that as "not yet").
        wait_until(lambda: arbiter_pid(arb) == arb.pid, 10.0, "ctl answered by the old one")
        assert whoami(arb.port) in arb.worker_pids()
        assert pid_file.read_text().strip() == str(arb.pid)
        assert not Path(f"{pid_file}.oldbin").exists()


# -- systemd ---------------------------------------------------------------------------------


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    return sock


def read_notes(sock: socket.socket, into: list[str]) -> list[str]:
    with contextlib.suppress(TimeoutError, BlockingIOError):
        while True:
            into.extend(sock.recv(4096).decode().split("\n"))
    return into


def test_sd_notify_ready_reloading_status_watchdog_stopping(tmp_path: Path) -> None:
    notes: list[str] = []
    with notify_socket(tmp_path / "notify.sock") as sock:
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"}
        with arbiter(tmp_path, "testapps.whoami:WhoAmI", env=env) as arb:
            arb.wait_serving()
            wait_until(lambda: "READY=1" in read_notes(sock, notes), 5.0, "READY=1")
            assert "STATUS=2/2 workers ready" in notes
            wait_until(lambda: read_notes(sock, notes).count("WATCHDOG=1") >= 2, 5.0, "watchdog")
            del notes[:]
            arb.send(signal.SIGHUP)
            wait_until(lambda: "READY=1" in read_notes(sock, notes), 10.0, "READY=1 after HUP")
            reloading = notes.index("RELOADING=1")
            assert reloading < notes.index("READY=1")
            usec = notes[reloading + 1]
            assert re.fullmatch(r"MONOTONIC_USEC=\d+", usec), notes
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert 0 < now - int(usec.partition("=")[2]) < 30_000_000
            arb.send(signal.SIGTERM)
            assert arb.wait_exit(10.0) == 0
            read_notes(sock, notes)
            assert "STOPPING=1" in notes


def socket_activate() -> str:
    found = shutil.which("systemd-socket-activate")
    if found is None:
        raise AssertionError("systemd-socket-activate is missing (.ci/run installs systemd)")
    return found


def unit(path: Path) -> dict[str, list[str]]:
    """The Key=Value lines of a systemd unit file (every section), values by key."""
    values: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def test_socket_activation_with_the_example_units(tmp_path: Path) -> None:
    """``systemd-socket-activate`` passes two sockets named as the example .socket units
    name them: the served one and ``metrics``; no --bind is given."""
    service = unit(DEPLOY / "pulsar_arbiter.service")
    assert service["Type"] == ["notify"]
    assert "pulsar_arbiter.socket" in " ".join(service["Sockets"])
    names = [
        unit(DEPLOY / f)["FileDescriptorName"][0]
        for f in ("pulsar_arbiter.socket", "pulsar_arbiter-metrics.socket")
    ]
    assert names[1] == "metrics"
    port, mport = free_port(), free_port()
    notes: list[str] = []
    with notify_socket(tmp_path / "notify.sock") as sock:
        launcher = [
            socket_activate(),
            "-l",
            f"{HOST}:{port}",
            "-l",
            f"{HOST}:{mport}",
            f"--fdname={names[0]}:{names[1]}",
            "-E",
            "NOTIFY_SOCKET",
            "-E",
            "PYTHONPATH",
            sys.executable,
        ]
        home = tmp_path / "activated"
        home.mkdir()
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "PYTHONPATH": str(REPO_ROOT)}
        arb = Arbiter(home, "testapps.whoami:WhoAmI", workers=1, bind=None, env=env)
        arb.argv = [*launcher, *arb.argv[1:]]
        with arb:
            try:
                # The launcher execs the arbiter when the first connection comes.
                answer = wait_until(lambda: exchange(port, b"hello"), 10.0, "an answer")
                assert answer.endswith(b" hello")
                assert arb.stats()["arbiter"]["pid"] == arb.pid, "exec'd in place"
                assert get(mport, "/health") == (200, "ok: 1/1 workers ready\n")
                wait_until(lambda: "READY=1" in read_notes(sock, notes), 5.0, "READY=1")
                worker = next(iter(arb.worker_pids()))
                environ = psutil.Process(worker).environ()
                assert not {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} & set(environ)
                assert "from systemd" in arb.log()
            finally:
                print(arb.log()[-4000:])


# -- examples/deploy -------------------------------------------------------------------------


def seconds(text: str) -> float:
    return float(text.rstrip("s"))


def test_kubernetes_example_is_valid_and_its_grace_period_covers_the_drain() -> None:
    import kubernetes_validate  # type: ignore[import-untyped]

    documents = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    for document in documents:
        kubernetes_validate.validate(document, "1.30", strict=True)
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]

    def flag(name: str) -> str:
        return str(args[args.index(name) + 1])

    drain, graceful = seconds(flag("--drain-delay")), seconds(flag("--graceful-timeout"))
    metrics_port = int(flag("--metrics-bind").rpartition(":")[2])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
        assert container[probe]["httpGet"]["port"] == metrics_port
    # No preStop sleep: on TERM the arbiter drains by itself (health 503, serving on).
    assert "preStop" not in container.get("lifecycle", {}) and drain > 0
    # The kubelet's KILL must come after the drain, the graceful stop and a margin.
    assert pod["terminationGracePeriodSeconds"] >= drain + graceful + 5
    # Liveness tolerates the drain's 503s.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain


def test_nginx_example_is_accepted_by_nginx(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import chaos

    binary = chaos.nginx_binary()
    assert binary is not None, "nginx is missing (.ci/run installs nginx-light)"
    conf = (DEPLOY / "nginx.conf").read_text()
    wrapped = (
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{\naccess_log off;\n{conf}\n}}\n"
    )
    (tmp_path / "nginx.conf").write_text(wrapped)
    checked = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert os.path.exists(DEPLOY / "README.md")
