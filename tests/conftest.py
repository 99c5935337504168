"""Shared pytest fixtures.

Hub redirection: the Hub libraries read their settings from the environment *when they are imported*
(`huggingface_hub.constants.ENDPOINT` and the URL templates built from it, `datasets.config.HF_ENDPOINT`, the cache
folders, `HF_HUB_DISABLE_XET`, ...). pytest imports this file before any test module, so the environment is set
here, at import time, before anything imports those libraries: a local Hub server (tests/hub_server.py) reserves its
port now and starts serving when a test asks for the `hub_server` fixture.
"""

import os
import sys
import tempfile

import pytest
from hub_server import HubServer  # tests/ is on sys.path: pytest puts it there for this conftest

_HUB = HubServer()
_HF_HOME = tempfile.TemporaryDirectory(prefix="hf-home-")  # removed at interpreter exit

os.environ.update(
    HF_ENDPOINT=_HUB.endpoint,
    HF_HOME=_HF_HOME.name,  # token file, hub cache and datasets cache: never the user's own
    HF_HUB_CACHE=os.path.join(_HF_HOME.name, "hub"),
    HF_DATASETS_CACHE=os.path.join(_HF_HOME.name, "datasets"),
    HF_TOKEN="hf_local_test_token",  # any bearer token: the local server accepts it as user "tester"
    HF_HUB_DISABLE_XET="1",  # the local server speaks plain LFS, not Xet
    HF_HUB_OFFLINE="0",
    HF_DATASETS_OFFLINE="0",
    HF_HUB_DISABLE_TELEMETRY="1",
    HF_HUB_DISABLE_PROGRESS_BARS="1",
)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests run tiny models: on a shared 2-core machine, a second thread mostly waits for a busy core
    (measured: a 150-step refiner run took 53 s with two threads under load, 1 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def hub_server():
    """The running local Hub, with `.endpoint` and `.repo_id(name)` (a fresh `tester/name-xxxx` per call)."""
    import huggingface_hub.constants  # noqa: F401  (so that its endpoint is always checked below)

    # A Hub library imported before this conftest (e.g. by a plugin) would have kept the real Hub's URL.
    for module, attribute in [("huggingface_hub.constants", "ENDPOINT"), ("datasets.config", "HF_ENDPOINT")]:
        if module in sys.modules:
            value = getattr(sys.modules[module], attribute)
            assert value == _HUB.endpoint, (
                f"{module}.{attribute} is {value}, not the local Hub {_HUB.endpoint}"
            )
    with _HUB:
        yield _HUB


@pytest.fixture(scope="session")
def loopback_only():
    """Skips unless the tests run in a network namespace with loopback only (`make test` does, as root:
    scripts/loopback-only), where nothing but 127.0.0.1 is reachable: Ray and browser tests need it."""
    import socket

    names = [name for _, name in socket.if_nameindex()]
    if names != ["lo"]:
        pytest.skip(
            f"needs a loopback-only network namespace (run under scripts/loopback-only); have {names}"
        )
