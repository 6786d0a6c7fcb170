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
    def __init__(self, root: Path, extra_args: tuple = ()):
        self.root = root
        self.home = root / "home"
        self.skills = root / "skills"
        shutil.copytree(REPO / "skills", self.skills)
        # The web UI on a free port: daemons of tests side by side never compete for 3000.
        (self.skills / "aos-frontend" / "config.json").write_text('{"bind": "127.0.0.1:0"}')
        env = {k: v for k, v in os.environ.items() if not k.startswith("AOS_")}
        self.log = open(root / "kernel.log", "wb")
        self.process = subprocess.Popen(
            [str(aos_binary()), "up", "--port", "0", "--home", str(self.home), "--skills", str(self.skills),
             "--config", str(REPO / "aoscb.json"), *extra_args],
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


class FakeLlm:
    """An OpenAI-compatible chat-completions endpoint over real HTTP that streams a
    scripted reply per request (SSE chunks, tool calls as deltas) and records the
    request bodies it got."""

    def __init__(self, replies: list):
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.replies = list(replies)
        self.requests = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                reply = fake.replies.pop(0) if fake.replies else {"text": "(script exhausted)"}
                chunks = []
                if "text" in reply:
                    for piece in reply["text"].split(" "):
                        chunks.append({"content": piece + " "})
                    finish = "stop"
                else:
                    chunks.append({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                   "function": {"name": "bash", "arguments": ""}}]})
                    arguments = json.dumps({"command": reply["bash"]})
                    half = len(arguments) // 2
                    for part in (arguments[:half], arguments[half:]):
                        chunks.append({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                    finish = "tool_calls"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                frames = [{"choices": [{"index": 0, "delta": delta, "finish_reason": None}]} for delta in chunks]
                frames.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                               "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}})
                for frame in frames:
                    self._chunk(f"data: {json.dumps(frame)}\n\n".encode())
                self._chunk(b"data: [DONE]\n\n")
                self._chunk(b"")

            def _chunk(self, data: bytes):
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        import threading
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
