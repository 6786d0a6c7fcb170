"""HTTP client for the AOS kernel: syscalls (``POST /aoscp``), events (``GET /events``,
Server-Sent Events) and dispatch streams (``GET /dispatches/{id}/stream``).

Standard library only. Without arguments the client finds the kernel the way the
``aos`` CLI does: ``AOS_API_URL`` and ``AOS_API_TOKEN`` (or ``AOS_TOKEN`` inside an
agent's or a service's environment), else the files the daemon keeps in ``$AOS_HOME``
(default ``./.aos``).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterator, Optional

DEFAULT_API_URL = "http://127.0.0.1:8420"


class AosError(Exception):
    """A syscall failed: ``code`` is the stable error code (``invalid.params``,
    ``permission.denied``, ...), ``message`` says what went wrong, ``details`` may
    carry structured facts (the offending field, say)."""

    def __init__(self, code: str, message: str, details: Any = None, op: str = ""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.op = op


def _read_file(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
            return text or None
    except OSError:
        return None


class AosClient:
    """A client for one kernel with one bearer token."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        home: Optional[str] = None,
        timeout: float = 60.0,
    ):
        home = home or os.environ.get("AOS_HOME", "./.aos")
        self.url = (
            url
            or os.environ.get("AOS_API_URL")
            or _read_file(os.path.join(home, "api.url"))
            or DEFAULT_API_URL
        ).rstrip("/")
        self.token = (
            token
            or os.environ.get("AOS_API_TOKEN")
            or os.environ.get("AOS_TOKEN")
            or _read_file(os.path.join(home, "admin.token"))
        )
        self.timeout = timeout

    def _request(self, method: str, path: str, body: Optional[bytes] = None,
                 headers: Optional[dict] = None, timeout: Optional[float] = None):
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as error:
            # Error statuses still carry the envelope.
            return error
        except urllib.error.URLError as error:
            raise AosError("unavailable", f"cannot reach the AOS kernel at {self.url}: {error.reason}") from error

    def envelope(self, op: str, params: Optional[dict] = None) -> dict:
        """Calls ``op`` and returns the envelope ``{ok, op, data?, error?}`` as sent."""
        body = dict(params or {})
        body["op"] = op
        response = self._request(
            "POST", "/aoscp", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        with response:
            raw = response.read()
        try:
            return json.loads(raw)
        except ValueError as error:
            raise AosError("internal", f"the kernel answered `{op}` with something that is not JSON: {raw[:200]!r}") from error

    def call(self, op: str, **params: Any) -> Any:
        """Calls ``op`` and returns its data; raises :class:`AosError` on failure."""
        envelope = self.envelope(op, params)
        if not envelope.get("ok"):
            error = envelope.get("error") or {}
            raise AosError(error.get("code", "internal"), error.get("message", "no message"),
                           error.get("details"), op)
        return envelope.get("data")

    def health(self) -> dict:
        with self._request("GET", "/health") as response:
            return json.loads(response.read())

    def _sse(self, path: str, headers: Optional[dict] = None) -> Iterator[tuple]:
        response = self._request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})}, timeout=None)
        if response.status != 200:
            with response:
                envelope = json.loads(response.read() or b"{}")
            error = envelope.get("error") or {}
            raise AosError(error.get("code", "internal"), error.get("message", f"HTTP {response.status}"), error.get("details"))
        with response:
            name, data, event_id = None, [], None
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    if data:
                        yield name, "\n".join(data), event_id
                    name, data, event_id = None, [], None
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)
                    elif field == "id":
                        event_id = value

    def events(self, names: Optional[list] = None, agent_id: Optional[str] = None,
               session_id: Optional[str] = None, last_event_id: Optional[int] = None) -> Iterator[dict]:
        """Yields runtime events as dicts ``{id, name, ts, agentId?, sessionId?, payload}``
        until the stream ends. ``names`` are exact names or ``prefix.*`` patterns."""
        query = {}
        if names:
            query["names"] = ",".join(names)
        if agent_id:
            query["agentId"] = agent_id
        if session_id:
            query["sessionId"] = session_id
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else None
        path = "/events" + ("?" + urllib.parse.urlencode(query) if query else "")
        for _, data, _ in self._sse(path, headers):
            yield json.loads(data)

    def dispatch_stream(self, session_id: str, content: str, **options: Any) -> Iterator[tuple]:
        """Dispatches a user message to a session and yields ``(type, data)`` chunks from
        its stream: ``delta``, ``message``, ``tool_call``, ``tool_result``, ``error``,
        ``done``."""
        params = {"sessionId": session_id, "message": {"role": "user", "content": content}, **options}
        dispatch = self.call("session.dispatch", **params)
        path = f"/dispatches/{urllib.parse.quote(dispatch['dispatchId'])}/stream"
        for name, data, _ in self._sse(path):
            yield name, json.loads(data)
            if name == "done":
                return
