"""A small LeNet trained on scikit-learn's 8×8 digits, guarded by the energy score, saved as a
guard folder; and helpers to start ``hardened serve`` in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from hardened.data import Splits, load_splits
from hardened.guard import GuardedClassifier, make_score
from hardened.models import build_model, save_model
from hardened.train import TrainConfig, train

ARCH = {"input_shape": [1, 8, 8], "num_classes": 10, "channels": [8, 16], "hidden": 32}
SRC = Path(__file__).resolve().parents[2] / "src"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def digits() -> Splits:
    return load_splits("digits", seed=0)


@pytest.fixture(scope="session")
def digits_model(digits: Splits) -> nn.Module:
    state = torch.random.get_rng_state()
    torch.manual_seed(0)  # the test (not the library) fixes the initial weights
    model = build_model("lenet", **ARCH)
    torch.random.set_rng_state(state)
    train(model, digits.train, config=TrainConfig(epochs=6, batch_size=32, lr=3e-3, seed=0, eval_n=0))
    return model.eval()


@pytest.fixture(scope="session")
def guard(digits_model: nn.Module, digits: Splits) -> GuardedClassifier:
    guard = GuardedClassifier(digits_model, make_score("energy", digits_model), classes=digits.train.classes)
    guard.calibrate(digits.test.x[:200], fpr=0.05)
    return guard


@pytest.fixture(scope="session")
def guard_dir(guard: GuardedClassifier, digits_model: nn.Module, digits: Splits, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    save_model(digits_model, root / "lenet.safetensors", arch="lenet", arch_kwargs=ARCH,
               input_shape=(1, 8, 8), classes=digits.train.classes)
    guard.model_ref = str(root / "lenet.safetensors")
    guard.model_info = None
    return guard.save(root / "guard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``hardened serve ARGS`` on a free loopback port, in a subprocess; ``url``, ``process``."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: the access log never blocks the server
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(HERE)]), OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hardened.cli.main", "serve", *args, "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.output()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not become ready in 60 s")

    def output(self) -> str:
        """Everything the server wrote to stderr so far (its JSON log lines)."""
        self.log.seek(0)
        return self.log.read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_server() -> Iterator:
    servers: list[Server] = []

    def start(args: list[str]) -> Server:
        servers.append(Server(args))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def guard_server(guard_dir: Path) -> Iterator[Server]:
    """One guard service for a whole test module (at most 16 images and 1 MiB a request)."""
    server = Server(["--guard", str(guard_dir), "--max-images", "16", "--max-body-mb", "1"])
    yield server
    server.stop()
