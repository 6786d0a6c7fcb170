"""AosClient against a real daemon: syscalls, errors, events."""

import threading

import pytest

from aos_sdk import AosClient, AosError
from conftest import eventually


def test_calls_return_data_and_errors_carry_code_message_and_details(daemon):
    client = daemon.client
    agent = client.call("agent.create", displayName="py")
    session = client.call("session.create", agentId=agent["agentId"])
    assert session["status"] == "ready"
    appended = client.call(
        "session.append",
        sessionId=session["sessionId"],
        message={"role": "user", "parts": [{"type": "text", "text": "hello from python"}]},
    )
    assert appended["seq"] > 1

    with pytest.raises(AosError) as error:
        client.call("session.get", sessionId=session["sessionId"], colour="blue")
    assert error.value.code == "invalid.params"
    assert "colour" in error.value.message

    envelope = client.envelope("sesion.get", {})
    assert envelope["ok"] is False
    assert envelope["error"]["code"] == "not_found"
    assert "session.get" in envelope["error"]["details"]["suggestions"]

    with pytest.raises(AosError) as error:
        AosClient(daemon.url, "not-a-token").call("agent.list")
    assert error.value.code == "unauthenticated"


def test_events_stream_as_dicts(daemon):
    client = daemon.client
    agent = client.call("agent.create")
    seen = []
    ready = threading.Event()

    def listen():
        for event in AosClient(daemon.url, daemon.token).events(names=["session.started"], agent_id=agent["agentId"]):
            seen.append(event)
            return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    # The stream is open once the kernel counts a subscriber; creating sessions until
    # one is seen avoids guessing how long that takes.
    sessions = []

    def started():
        if not seen:
            sessions.append(client.call("session.create", agentId=agent["agentId"])["sessionId"])
        return seen

    event = eventually(started, "session.started on the stream")[0]
    assert event["name"] == "session.started"
    assert event["sessionId"] in sessions
    assert event["payload"]["agentId"] == agent["agentId"]


def test_dispatch_stream_runs_a_turn_with_a_tool_call(tmp_path):
    from conftest import Daemon, FakeLlm

    llm = FakeLlm([{"bash": "echo from-the-tool"}, {"text": "the tool said from-the-tool"}])
    running = Daemon(tmp_path, ("--llm-base-url", llm.base_url, "--llm-model", "scripted"))
    try:
        client = running.client
        agent = client.call("agent.create", displayName="py-dispatch")
        session = client.call("session.create", agentId=agent["agentId"])
        chunks = list(client.dispatch_stream(session["sessionId"], "run the tool"))
        kinds = [kind for kind, _ in chunks]
        assert kinds[-1] == "done", kinds
        assert "delta" in kinds and "tool_call" in kinds and "tool_result" in kinds, kinds
        results = [data for kind, data in chunks if kind == "tool_result"]
        assert "from-the-tool" in str(results[0]), results
        assert chunks[-1][1].get("status") == "done", chunks[-1]
        # The second request carried the tool's output back to the model.
        assert len(llm.requests) == 2
        assert "from-the-tool" in str(llm.requests[1]["messages"][-1])
    finally:
        running.stop()
        llm.close()
