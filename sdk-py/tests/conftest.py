"""Fixtures: a real AOS daemon (the `aos` binary the workspace built) on a temporary
home and skill root, reached only through its public surfaces."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "sdk-py"))

from aos_sdk import AosClient  # noqa: E402


def aos_binary() -> Path:
    path = Path(os.environ.get("AOS_BIN", REPO / "target" / "debug" / "aos"))
    if not path.is_file():
        pytest.fail(f"the aos binary is missing at {path}: run `cargo build --workspace --bins` (scripts/test does) or set AOS_BIN")
    return path


class Daemon:
    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.skills = root / "skills"
        shutil.copytree(REPO / "skills", self.skills)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AOS_")}
        self.log = open(root / "kernel.log", "wb")
        self.process = subprocess.Popen(
            [str(aos_binary()), "up", "--port", "0", "--home", str(self.home), "--skills", str(self.skills),
             "--config", str(REPO / "aoscb.json")],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        url_file = self.home / "api.url"
        while True:
            if url_file.is_file() and url_file.read_text().strip():
                self.url = url_file.read_text().strip()
                try:
                    urllib.request.urlopen(self.url + "/health", timeout=2).read()
                    break
                except OSError:
                    pass
            if self.process.poll() is not None or time.time() > deadline:
                self.log.flush()
                pytest.fail("the daemon did not start:\n" + (root / "kernel.log").read_text())
            time.sleep(0.05)
        self.token = (self.home / "admin.token").read_text().strip()
        self.client = AosClient(self.url, self.token)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def daemon():
    root = Path(tempfile.mkdtemp(prefix="aos-py-"))
    running = Daemon(root)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(root, ignore_errors=True)


def eventually(check, what: str, limit: float = 15.0):
    deadline = time.time() + limit
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what}")
        time.sleep(0.05)
