import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from lmforge.config import ServeConfig
from lmforge.registry import ModelRegistry
from lmforge.serve import ServeError, run_server
from lmforge.serve.server import bind_socket


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_missing_registry_names_path_and_fix(tmp_path):
    with pytest.raises(ServeError) as info:
        run_server(tmp_path / "nowhere", ServeConfig(port=0))
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message
    assert "lmforge demo" in message and "--registry" in message


def test_busy_port_is_one_clear_line(tiny_registry, busy_port):
    with pytest.raises(ServeError) as info:
        run_server(tiny_registry, ServeConfig(host="127.0.0.1", port=busy_port))
    message = str(info.value)
    assert message.startswith(f"port {busy_port} on 127.0.0.1 is already in use; pass --port")
    assert "\n" not in message


def test_port_is_checked_before_the_model_loads(tmp_path, tiny_model_dir, busy_port):
    # A model folder whose weights are garbage: loading it would fail. The busy port must be
    # reported first, without paying for (or tripping over) the model load.
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    registry = tmp_path / "registry"
    ModelRegistry(registry).register("broken", broken, alias="production")
    with pytest.raises(ServeError, match="already in use"):
        run_server(registry, ServeConfig(port=busy_port))


def test_bad_host_is_a_clear_error():
    with pytest.raises(ServeError, match=r"cannot bind to host '203\.0\.113\.7'"):
        bind_socket("203.0.113.7", 0)


def test_server_answers_and_stops_cleanly_on_ctrl_c(tiny_registry):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = (
        "import sys; from pathlib import Path; from lmforge.config import ServeConfig; "
        "from lmforge.serve import run_server; "
        f"run_server(Path(sys.argv[1]), ServeConfig(port={port}))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tiny_registry)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        assert ready, proc.stdout.read().decode() if proc.poll() is not None else "not ready"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"texts": ["hi"]}, timeout=5)
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text
    assert f"on http://127.0.0.1:{port}" in text and "server stopped" in text
    assert "Traceback" not in text


def test_accepted_connections_get_tcp_nodelay():
    # Without TCP_NODELAY each response waits ~40 ms for a delayed ACK (Nagle's algorithm).
    import asyncio

    sock = bind_socket("127.0.0.1", 0)

    async def main() -> int:
        seen: dict[str, int] = {}

        async def on_connect(reader, writer):
            raw = writer.get_extra_info("socket")
            seen["nodelay"] = raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return seen["nodelay"]

    try:
        assert asyncio.run(main()) != 0
    finally:
        sock.close()
