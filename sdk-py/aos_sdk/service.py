"""Writing AOS skill services in Python (standard library only).

A service is a function that receives a :class:`ServiceContext` and returns its
handlers by name::

    from aos_sdk import define_service, hook

    @define_service
    def guard(ctx):
        def tool_before(input, output):
            if "rm -rf /" in output["args"]["command"]:
                return {"action": "reject", "reason": "refusing to delete /"}
            return {"action": "allow"}

        def on_session(event):
            ctx.log(f"{event['name']} {event['sessionId']}")

        @ctx.op("check", "Would a command be allowed?")
        def check(params, caller):
            return {"allowed": "rm -rf /" not in params.get("command", "")}

        return {"tool.before": hook(tool_before, priority=-10), "session.*": on_session}

    if __name__ == "__main__":
        guard.run()

Names with ``*`` and names starting with ``skill.`` are event subscriptions; other
names are hooks (the kernel treats catalogued event names listed as hooks as
subscriptions too). A hook handler gets ``(input, output)`` and returns the verdict
dict, or ``None`` (allow / keep the data). An event handler gets the event dict.
Handlers run on their own threads; events are delivered in order on one thread.

``run()`` connects the way the kernel says in the environment — ``AOS_SERVICE_SOCKET``
for services the kernel spawned, ``AOS_SERVICE_URL`` + ``AOS_SERVICE_TOKEN`` for
remote ones over WebSocket — and returns when the kernel sends ``shutdown`` or the
connection closes, so the service never outlives its kernel.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import socket
import ssl
import struct
import sys
import threading
import traceback
import urllib.parse
from typing import Any, Callable, Optional

from .client import AosError

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 16 * 1024 * 1024
SDK_NAME = "aos-sdk-python/0.1.0"

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603


class Hook:
    """A hook handler with its registration options."""

    def __init__(self, handler: Callable, priority: Optional[int] = None,
                 timeout_ms: Optional[int] = None, interactive: bool = False):
        self.handler = handler
        self.priority = priority
        self.timeout_ms = timeout_ms
        self.interactive = interactive


def hook(handler: Callable, priority: Optional[int] = None,
         timeout_ms: Optional[int] = None, interactive: bool = False) -> Hook:
    """Wraps a hook handler with a priority (lower runs first), a deadline per call
    (default 5000 ms, at most 60000), or ``interactive=True`` for handlers that wait
    for a person (up to an hour)."""
    return Hook(handler, priority, timeout_ms, interactive)


def allow(output: Any = None) -> dict:
    return {"action": "allow"} if output is None else {"action": "allow", "output": output}


def reject(reason: str) -> dict:
    return {"action": "reject", "reason": reason}


# ---------------------------------------------------------------------------------------
# Transports: one text frame at a time.
# ---------------------------------------------------------------------------------------


class _LineTransport:
    """Newline-delimited frames over a stream socket (the kernel's Unix socket)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._reader = sock.makefile("rb")

    def recv(self) -> Optional[str]:
        while True:
            line = self._reader.readline(MAX_FRAME_BYTES + 1)
            if not line:
                return None
            if not line.endswith(b"\n") and len(line) > MAX_FRAME_BYTES:
                # Too large: skip to the end of the line.
                while line and not line.endswith(b"\n"):
                    line = self._reader.readline(1 << 20)
                continue
            return line.decode("utf-8", errors="replace").rstrip("\r\n")

    def send(self, text: str) -> None:
        self._sock.sendall(text.encode("utf-8") + b"\n")

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()


class _WebSocketTransport:
    """A minimal RFC 6455 client: text frames, masking, ping/pong, close."""

    def __init__(self, url: str, token: str):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise AosError("invalid.params", f"AOS_SERVICE_URL must be ws:// or wss://, got {url}")
        port = parts.port or (443 if parts.scheme == "wss" else 80)
        sock = socket.create_connection((parts.hostname, port), timeout=10)
        if parts.scheme == "wss":
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        sock.sendall(request.encode())
        self._reader = sock.makefile("rb")
        status = self._reader.readline().decode(errors="replace")
        headers = []
        while True:
            line = self._reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            headers.append(line)
        if " 101 " not in status:
            raise AosError("unauthenticated" if " 401 " in status else "unavailable",
                           f"the kernel refused the WebSocket upgrade: {status.strip()}")
        sock.settimeout(None)
        self._sock = sock
        self._send_lock = threading.Lock()

    def _read_exact(self, n: int) -> Optional[bytes]:
        data = self._reader.read(n)
        return data if data is not None and len(data) == n else None

    def recv(self) -> Optional[str]:
        message = b""
        while True:
            head = self._read_exact(2)
            if head is None:
                return None
            fin, opcode = head[0] & 0x80, head[0] & 0x0F
            length = head[1] & 0x7F
            if length == 126:
                ext = self._read_exact(2)
                length = struct.unpack("!H", ext)[0] if ext else 0
            elif length == 127:
                ext = self._read_exact(8)
                length = struct.unpack("!Q", ext)[0] if ext else 0
            if length > MAX_FRAME_BYTES:
                return None
            payload = self._read_exact(length) if length else b""
            if payload is None:
                return None
            if opcode == 0x8:
                return None
            if opcode == 0x9:
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            message += payload
            if len(message) > MAX_FRAME_BYTES:
                return None
            if fin:
                return message.decode("utf-8", errors="replace")

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        with self._send_lock:
            self._sock.sendall(header + mask + masked)

    def send(self, text: str) -> None:
        self._send_frame(0x1, text.encode("utf-8"))

    def close(self) -> None:
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self._sock.close()


def _connect():
    path = os.environ.get("AOS_SERVICE_SOCKET")
    if path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return _LineTransport(sock)
    url, token = os.environ.get("AOS_SERVICE_URL"), os.environ.get("AOS_SERVICE_TOKEN")
    if url and token:
        return _WebSocketTransport(url, token)
    raise AosError(
        "invalid.params",
        "no kernel to connect to: AOS_SERVICE_SOCKET (spawned services) or AOS_SERVICE_URL "
        "with AOS_SERVICE_TOKEN (remote services) must be set",
    )


# ---------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------


class _Pending:
    def __init__(self):
        self.event = threading.Event()
        self.result = None
        self.error = None


class ServiceContext:
    """What a service's handlers can use: syscalls over the connection (:meth:`call`),
    who the service is (:attr:`skill`, :attr:`owner`, :attr:`instance_id`), a private
    data directory (:attr:`data_dir`) and :meth:`log` (to the kernel's log)."""

    def __init__(self, skill: str):
        self.skill = skill
        self.owner: dict = {}
        self.instance_id: Optional[str] = None
        self.data_dir = os.environ.get("AOS_DATA_DIR")
        self._ops: list = []
        self._transport = None
        self._send_lock = threading.Lock()
        self._pending: dict = {}
        self._pending_lock = threading.Lock()
        self._next_id = 1

    def op(self, name: str, description: str, kind: str = "query",
           timeout_ms: Optional[int] = None, params_schema: Optional[dict] = None):
        """Declares the operation ``<skill>.<name>``; the decorated function gets
        ``(params, caller)`` and returns the data (or raises :class:`AosError`)."""

        def decorate(handler: Callable) -> Callable:
            declaration = {"name": name, "kind": kind, "description": description}
            if timeout_ms is not None:
                declaration["timeoutMs"] = timeout_ms
            if params_schema is not None:
                declaration["paramsSchema"] = params_schema
            self._ops.append((declaration, handler))
            return handler

        return decorate

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def _send(self, message: dict) -> None:
        text = json.dumps(message, separators=(",", ":"))
        with self._send_lock:
            try:
                self._transport.send(text)
            except OSError:
                # The kernel is gone; the read loop ends the service.
                pass

    def _fail_pending(self) -> None:
        with self._pending_lock:
            waiting = list(self._pending.values())
        for pending in waiting:
            pending.error = {"code": INTERNAL_ERROR, "message": "the connection to the kernel closed"}
            pending.event.set()

    def _request(self, method: str, params: dict, timeout: float) -> Any:
        with self._pending_lock:
            request_id = self._next_id
            self._next_id += 1
            pending = self._pending[request_id] = _Pending()
        try:
            self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            if not pending.event.wait(timeout):
                raise AosError("timeout", f"`{method}` got no answer within {timeout} s")
        finally:
            with self._pending_lock:
                self._pending.pop(request_id, None)
        if pending.error is not None:
            raise AosError("service.failed", pending.error.get("message", "error"), pending.error)
        return pending.result

    def _answered(self, message: dict) -> None:
        with self._pending_lock:
            pending = self._pending.get(message.get("id"))
        if pending is not None:
            pending.result = message.get("result")
            pending.error = message.get("error")
            pending.event.set()

    def call_envelope(self, op: str, params: Optional[dict] = None, timeout: float = 120.0) -> dict:
        """A syscall; returns the envelope ``{ok, op, data?, error?}``."""
        return self._request("call", {"op": op, "params": params or {}}, timeout)

    def call(self, op: str, **params: Any) -> Any:
        """A syscall with the service's authority; returns the data or raises
        :class:`AosError`."""
        envelope = self.call_envelope(op, params)
        if not envelope.get("ok"):
            error = envelope.get("error") or {}
            raise AosError(error.get("code", "internal"), error.get("message", ""), error.get("details"), op)
        return envelope.get("data")


# The catalogued hooks whose names start with `skill.` like the custom events
# `skill.<skill>.<event>` do.
_SKILL_HOOKS = frozenset({
    "skill.index.refresh.before", "skill.discovery.before", "skill.default.resolve.before",
    "skill.load.before", "skill.start.before", "skill.stop.before", "skill.discovery.resolve",
})


class Service:
    """A service definition; :meth:`run` serves it."""

    def __init__(self, factory: Callable[[ServiceContext], dict], name: Optional[str] = None):
        self.factory = factory
        self.name = name

    def run(self) -> None:
        skill = os.environ.get("AOS_SKILL_NAME") or self.name or self.factory.__name__.replace("_", "-")
        ctx = ServiceContext(skill)
        handlers = self.factory(ctx) or {}
        hooks, events = {}, []
        for name, handler in handlers.items():
            is_hook = isinstance(handler, Hook) or name in _SKILL_HOOKS
            if not is_hook and ("*" in name or name.startswith("skill.")):
                events.append((name, handler))
            else:
                hooks[name] = handler if isinstance(handler, Hook) else Hook(handler)
        ctx._transport = _connect()
        reader = threading.Thread(target=_read_loop, args=(ctx, hooks, events), daemon=True)
        reader.start()
        hello = ctx._request("hello", {"protocol": PROTOCOL_VERSION, "skill": skill,
                                        "sdk": SDK_NAME, "features": []}, 10)
        ctx.instance_id = hello.get("instanceId")
        ctx.owner = hello.get("owner", {})
        registration = {"hooks": [], "events": [name for name, _ in events],
                        "ops": [declaration for declaration, _ in ctx._ops]}
        for name, entry in hooks.items():
            item = {"name": name, "interactive": entry.interactive}
            if entry.priority is not None:
                item["priority"] = entry.priority
            if entry.timeout_ms is not None:
                item["timeoutMs"] = entry.timeout_ms
            registration["hooks"].append(item)
        ctx._request("register", registration, 10)
        reader.join()


def define_service(factory: Optional[Callable] = None, *, name: Optional[str] = None):
    """Turns a handler factory into a :class:`Service`. Usable bare (``@define_service``)
    or with a name (``@define_service(name="my-skill")``); the skill name defaults to
    ``AOS_SKILL_NAME``."""
    if factory is None:
        return lambda f: Service(f, name)
    return Service(factory, name)


class _Workers:
    """Daemon threads answering calls, started as needed (up to ``limit``) and kept:
    starting a thread per call costs more than most handlers. Daemon threads never
    keep a service alive once its kernel is gone."""

    def __init__(self, limit: int = 64):
        self._queue: "queue.Queue" = queue.Queue()
        self._lock = threading.Condition()
        self._threads = 0
        self._idle = 0
        self._active = 0
        self._limit = limit

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            self._active += 1
            if self._idle == 0 and self._threads < self._limit:
                self._threads += 1
                threading.Thread(target=self._work, daemon=True).start()
        self._queue.put(job)

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._queue.get()
            with self._lock:
                self._idle -= 1
            try:
                job()
            finally:
                with self._lock:
                    self._active -= 1
                    self._lock.notify_all()

    def drain(self, timeout: float) -> None:
        """Waits until no call is being answered, at most ``timeout`` seconds."""
        with self._lock:
            self._lock.wait_for(lambda: self._active == 0, timeout=timeout)


def _matches(pattern: str, name: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


def _read_loop(ctx: ServiceContext, hooks: dict, events: list) -> None:
    event_queue: "queue.Queue" = queue.Queue()

    def deliver_events():
        while True:
            event = event_queue.get()
            for pattern, handler in events:
                if _matches(pattern, event.get("name", "")):
                    try:
                        handler(event)
                    except Exception:  # noqa: BLE001 - a handler bug must not stop delivery
                        traceback.print_exc()

    threading.Thread(target=deliver_events, daemon=True).start()
    ops = {f"{ctx.skill}.{declaration['name']}": handler for declaration, handler in ctx._ops}
    transport = ctx._transport
    workers = _Workers()
    while True:
        try:
            text = transport.recv()
        except OSError:
            text = None
        if text is None:
            break
        try:
            message = json.loads(text)
        except ValueError:
            ctx._send({"jsonrpc": "2.0", "id": None,
                       "error": {"code": PARSE_ERROR, "message": "the frame is not JSON"}})
            continue
        if not isinstance(message, dict):
            continue
        method = message.get("method")
        if method is None:
            ctx._answered(message)
        elif method == "event":
            event_queue.put(message.get("params") or {})
        elif method == "shutdown":
            # Calls already being answered finish first (the kernel has stopped sending
            # new ones), for at most three seconds.
            workers.drain(3)
            ctx._send({"jsonrpc": "2.0", "id": message.get("id"), "result": {}})
            break
        elif "id" in message:
            workers.submit(lambda message=message: _answer(ctx, hooks, ops, message))
    ctx._fail_pending()
    transport.close()


def _answer(ctx: ServiceContext, hooks: dict, ops: dict, message: dict) -> None:
    request_id, method, params = message.get("id"), message.get("method"), message.get("params") or {}
    try:
        if method == "hook":
            entry = hooks.get(params.get("name"))
            if entry is None:
                raise LookupError(f"this service does not answer hook `{params.get('name')}`")
            verdict = entry.handler(params.get("input"), params.get("output"))
            if verdict is None:
                verdict = {"action": "allow"} if params.get("class") == "admission" else {}
            result = verdict
        elif method == "op":
            handler = ops.get(params.get("name"))
            if handler is None:
                raise LookupError(f"this service does not provide `{params.get('name')}`")
            result = handler(params.get("params") or {}, params.get("caller") or {})
        else:
            ctx._send({"jsonrpc": "2.0", "id": request_id,
                       "error": {"code": METHOD_NOT_FOUND, "message": f"unknown method `{method}`"}})
            return
        ctx._send({"jsonrpc": "2.0", "id": request_id, "result": result})
    except AosError as error:
        ctx._send({"jsonrpc": "2.0", "id": request_id,
                   "error": {"code": INTERNAL_ERROR, "message": error.message, "data": {"code": error.code}}})
    except LookupError as error:
        ctx._send({"jsonrpc": "2.0", "id": request_id,
                   "error": {"code": METHOD_NOT_FOUND, "message": str(error)}})
    except Exception as error:  # noqa: BLE001 - report handler bugs to the kernel
        traceback.print_exc()
        ctx._send({"jsonrpc": "2.0", "id": request_id,
                   "error": {"code": INTERNAL_ERROR, "message": f"{type(error).__name__}: {error}"}})
