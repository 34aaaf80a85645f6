import threading
import time

import pytest
import uvicorn

from lmforge.config import ServeConfig
from lmforge.registry import ModelRegistry
from lmforge.serve import create_app
from lmforge.serve.server import bind_socket


@pytest.fixture(scope="module")
def live_url(tmp_path_factory, tiny_model_dir):
    """The real app on uvicorn in a background thread, on a free 127.0.0.1 port."""
    registry = tmp_path_factory.mktemp("bench-registry")
    ModelRegistry(registry).register("tiny", tiny_model_dir, alias="production")
    sock = bind_socket("127.0.0.1", 0)
    app = create_app(registry, ServeConfig(max_texts=2))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "test server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(15)
    sock.close()
