import socket

import httpx
import pytest

from lmforge.bench.server_process import ServerProcess, ServerStartError, serve_command


def test_serve_command_uses_the_cli(tmp_path):
    cmd = serve_command(tmp_path, "127.0.0.1", 8123, model="m", config_path=tmp_path / "c.yaml")
    assert cmd[1:4] == ["-m", "lmforge", "serve"]
    assert cmd[4:] == [
        "--registry", str(tmp_path), "--host", "127.0.0.1", "--port", "8123",
        "--model", "m", "--config", str(tmp_path / "c.yaml"),
    ]  # fmt: skip


def test_server_process_serves_then_stops_cleanly_on_sigterm(tiny_registry):
    server = ServerProcess(tiny_registry, startup_timeout_s=60)
    with server:
        r = httpx.post(server.url + "/v1/predict", json={"texts": ["hello"]}, timeout=10)
        assert r.status_code == 200
        assert r.json()["model"] == {"name": "tiny", "version": 1, "variant": "production"}
        proc = server.proc
    assert proc.returncode == 0, server.last_output  # SIGTERM drains and exits 0
    assert "server stopped" in server.last_output
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/healthz", timeout=2)


def test_dead_server_error_shows_its_output(tmp_path):
    server = ServerProcess(tmp_path / "no-registry", startup_timeout_s=60)
    with pytest.raises(ServerStartError) as info:
        server.start()
    message = str(info.value)
    assert "exited with code 2" in message
    assert "no model registry at" in message  # the server's own one-line error
    assert server.proc is None  # nothing left running


def test_fixed_busy_port_is_reported(tiny_registry):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ServerStartError, match=f"port {port} on 127.0.0.1 is already in use"):
            ServerProcess(tiny_registry, port=port, startup_timeout_s=60).start()
