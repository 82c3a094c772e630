"""`make serve`: the registry's champion served over MLflow's scoring protocol on loopback answers REST
requests with images, reproducibly per seed, and rejects a bad class id with a 400. Bad input (issue 18)
is refused over real HTTP to a real server: too much work, zero steps, a fractional label, infinite
guidance, an oversize body, a foreign Host; a timed-out request stops computing, and SIGTERM stops the
server within seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.processes import cpu_seconds, group
from tests.helpers.release import ReleaseRun, free_port, post_json, server

TIMEOUT_S = 3  # the served module's request timeout: every refusal below must come well before it


@pytest.fixture(scope="module")
def run(release_run: ReleaseRun) -> ReleaseRun:
    return release_run


@pytest.mark.slow
def test_serve_champion_generates_images_over_rest(run: ReleaseRun, tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [sys.executable, "-m", "pipelines.serve", "--params", str(run.params), "--port", str(port)]
    base = f"http://127.0.0.1:{port}"
    with server(cmd, f"{base}/ping", tmp_path / "serve.log", env=env):
        body = {
            "dataframe_split": {
                "columns": ["label", "guidance_scale", "seed"],
                "data": [[0, 2.0, 11], [7, 1.0, 12], [0, 2.0, 11]],
            },
            "params": {"steps": 2},
        }
        status, out = post_json(f"{base}/invocations", body)
        assert status == 200, out
        images = np.asarray(out["predictions"])
        size, channels = run.cfg.data.image_size, run.cfg.data.channels
        assert images.shape == (3, size, size, channels)
        assert images.min() >= 0 and images.max() <= 255
        assert (images[0] == images[2]).all()  # same label, guidance and seed: same image
        assert not (images[0] == images[1]).all()

        status, out = post_json(f"{base}/invocations", {"dataframe_records": [{"label": 99}]})
        assert status == 400 and "label must be a class id" in out.get("message", "")
    assert "models:/diffaudit-digits@champion" in (tmp_path / "serve.log").read_text()


def test_serve_without_a_champion_says_so(run: ReleaseRun, tmp_path, capsys) -> None:
    from pipelines import serve

    params = tmp_path / "params.yaml"
    params.write_text(run.params.read_text().replace(str(run.root / "mlflow.db"), str(tmp_path / "empty.db")))
    old = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        assert serve.main(["--params", str(params)]) == 1
    finally:
        if old is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old
    assert "diffaudit-digits@champion does not exist" in capsys.readouterr().err


def _serve_cmd(run: ReleaseRun, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.serve", "--params", str(run.params), "--port", str(port), *extra]


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | extra


@pytest.fixture(scope="module")
def served(
    run: ReleaseRun, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen]]:
    """One server for the refusals, on the defaults but a short request timeout (MLflow's own variable)."""
    port = free_port()
    log = tmp_path_factory.mktemp("served") / "serve.log"
    env = _env(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=str(TIMEOUT_S))
    with server(_serve_cmd(run, port), f"http://127.0.0.1:{port}/ping", log, env=env) as proc:
        yield f"http://127.0.0.1:{port}", proc


def _rows(n: int, **params: object) -> dict:
    return {"dataframe_split": {"columns": ["label", "seed"], "data": [[i % 10, i] for i in range(n)]}} | {
        "params": params
    }


def _get(url: str, host: str) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_serve_refuses_more_work_than_its_cap_before_computing(served) -> None:
    """1024 rows x 1000 steps was within the row and step caps: it ran until the timeout (and on)."""
    base, _ = served
    start = time.monotonic()
    status, out = post_json(f"{base}/invocations", _rows(1024, steps=1000), timeout=60)
    assert status == 400 and "1024000 image-steps" in out["message"] and "at most 20480" in out["message"]
    assert time.monotonic() - start < TIMEOUT_S


def test_a_timed_out_request_stops_computing(served) -> None:
    """20 images one at a time at 1000 steps (within the cap) outlast the timeout: the 504 comes, and the
    server's CPU goes idle instead of finishing 20,000 denoising steps nobody will receive."""
    base, proc = served
    status, out = post_json(f"{base}/invocations", _rows(20, steps=1000, batch_size=1), timeout=60)
    assert status == 504, out
    time.sleep(1.0)
    before = cpu_seconds(group(proc.pid))
    time.sleep(3.0)
    assert cpu_seconds(group(proc.pid)) - before < 0.5


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (_rows(2, steps=0), "steps must be in [1, 1000], got 0"),
        (_rows(2, batch_size=0), "batch_size must be in [1, 1024], got 0"),
        ({"dataframe_records": [{"label": 1.5}]}, "label must be a class id in [0, 9]"),
        ({"dataframe_records": [{"label": 1, "seed": 2.5}]}, "seed must be a whole number in [0, 2**32)"),
        (
            {"dataframe_records": [{"label": 1, "guidance_scale": float("inf")}]},
            "finite number >= 0, got inf",
        ),
    ],
    ids=["steps-0", "batch-size-0", "fractional-label", "fractional-seed", "infinite-guidance"],
)
def test_serve_refuses_values_it_used_to_change_silently(served, body: dict, says: str) -> None:
    """steps=0 and batch_size=0 fell back to the defaults, label 1.5 and seed 2.5 were truncated, and
    guidance_scale=inf sampled NaN images: each is a 400 naming the allowed values."""
    base, _ = served
    status, out = post_json(f"{base}/invocations", body, timeout=60)
    assert status == 400 and says in out.get("message", ""), out


def _raw_post(port: int, headers: bytes, body: bytes) -> bytes:
    """Send headers and part of a body, then read what the server answers (without sending the rest)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n")
        sock.sendall(headers + b"\r\n" + body)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
            if not (part := sock.recv(4096)):
                break
            answer += part
        return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def test_serve_refuses_an_oversize_body_before_reading_it(served) -> None:
    """A 12 MB body was read and parsed for 15 s before the model refused it: now a 413 by its
    Content-Length after 64 kB of it, and a chunked one as soon as it passes the limit."""
    base, _ = served
    port = int(base.rsplit(":", 1)[1])
    start = time.monotonic()
    head = _raw_post(port, b"Content-Length: 12000000\r\n", b"[" * 65536)
    assert head.startswith(b"HTTP/1.1 413") and b"over the limit of 1048576 bytes" in head, head
    assert time.monotonic() - start < 2.0
    chunk = b"[" * (2 * 1024 * 1024)
    head = _raw_post(port, b"Transfer-Encoding: chunked\r\n", b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head


def test_serve_refuses_a_foreign_host_header(served) -> None:
    """A page's script can reach a loopback server under a name it controls (DNS rebinding): only the
    loopback names are answered by default."""
    base, _ = served
    port = base.rsplit(":", 1)[1]
    status, text = _get(f"{base}/ping", f"evil.example:{port}")
    assert status == 400 and "'evil.example:" in text and "not allowed" in text
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert _get(f"{base}/ping", host)[0] == 200, host


def test_sigterm_stops_the_server_mid_request(run: ReleaseRun, tmp_path: Path) -> None:
    """`make serve` execs pipelines.serve: SIGTERM to it (what make forwards, or a supervisor sends) while
    a long request runs stops every process of the server within seconds; `--allowed-hosts` replaces the
    loopback names."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = _serve_cmd(run, port, "--allowed-hosts", f"serve.example,127.0.0.1:{port}")
    with server(cmd, f"{base}/ping", tmp_path / "serve.log", env=_env()) as proc:
        assert _get(f"{base}/ping", "serve.example")[0] == 200
        assert _get(f"{base}/ping", "localhost")[0] == 400
        answers: list[int] = []

        def long_request() -> None:
            try:
                answers.append(post_json(f"{base}/invocations", _rows(20, steps=1000, batch_size=1))[0])
            except OSError:
                answers.append(-1)  # the connection closed without an answer

        client = threading.Thread(target=long_request)
        client.start()
        time.sleep(2.0)
        assert not answers, "the request finished before SIGTERM: make it longer"
        stop = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        while group(proc.pid) and time.monotonic() - stop < 10:
            time.sleep(0.2)
        assert group(proc.pid) == set(), (
            f"still running 10 s after SIGTERM:\n{(tmp_path / 'serve.log').read_text()[-2000:]}"
        )
        client.join(timeout=10)
        assert answers and answers[0] in (503, -1), answers
