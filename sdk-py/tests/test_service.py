"""Python services against a real daemon: spawned over the Unix socket, and remote over
WebSocket."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from aos_sdk import AosError
from conftest import REPO, eventually

SERVICE = textwrap.dedent(
    '''
    from aos_sdk import AosError, define_service, hook

    @define_service
    def tagger(ctx):
        seen = []

        def before_write(input, output):
            message = output["message"]
            for part in message["parts"]:
                if part.get("type") == "text":
                    part["text"] = "[py] " + part["text"]
            return {"action": "allow", "output": {"message": message}}

        def on_started(event):
            seen.append(event["sessionId"])

        @ctx.op("seen", "Sessions this service saw start.")
        def seen_op(params, caller):
            return {"sessions": seen, "caller": caller["identity"], "skill": ctx.skill}

        @ctx.op("title", "Reads a session title through the kernel.")
        def title(params, caller):
            if "sessionId" not in params:
                raise AosError("invalid.params", "`sessionId` is required")
            return {"title": ctx.call("session.get", sessionId=params["sessionId"])["title"]}

        return {"session.message.beforeWrite": hook(before_write, timeout_ms=3000),
                "session.*": lambda e: on_started(e) if e["name"] == "session.started" else None}

    if __name__ == "__main__":
        tagger.run()
    '''
)


def write_skill(root: Path, name: str, code: str):
    skill = root / name
    skill.mkdir(parents=True)
    (skill / "service.py").write_text(code)
    (skill / "SKILL.md").write_text(f"---\nname: {name}\ndescription: test {name}\nservice: ./service.py\n---\nbody\n")


def last_text(client, session_id):
    history = client.call("session.history.list", sessionId=session_id, limit=1000)
    return history["items"][-1]["parts"][0]["text"]


def test_a_spawned_service_answers_hooks_events_and_operations(daemon):
    client = daemon.client
    write_skill(daemon.skills, "py-tagger", SERVICE)
    eventually(lambda: any(s["name"] == "py-tagger" for s in client.call("skill.list")), "py-tagger indexed")
    service = client.call("skill.start", name="py-tagger")
    assert service["state"] == "running"
    assert service["sdk"].startswith("aos-sdk-python/")
    assert service["registered"]["ops"] == ["py-tagger.seen", "py-tagger.title"]

    agent = client.call("agent.create")
    session = client.call("session.create", agentId=agent["agentId"], title="the title")
    client.call("session.append", sessionId=session["sessionId"],
                message={"role": "user", "parts": [{"type": "text", "text": "hi"}]})
    assert last_text(client, session["sessionId"]) == "[py] hi"

    seen = eventually(lambda: client.call("py-tagger.seen")["sessions"], "the session.started event")
    assert session["sessionId"] in seen
    assert client.call("py-tagger.seen")["caller"] == "admin"
    assert client.call("py-tagger.title", sessionId=session["sessionId"]) == {"title": "the title"}
    try:
        client.call("py-tagger.title")
        raise AssertionError("expected invalid.params")
    except AosError as error:
        assert error.code == "invalid.params"
        assert "sessionId" in error.message

    client.call("skill.stop", serviceId=service["serviceId"])
    client.call("session.append", sessionId=session["sessionId"],
                message={"role": "user", "parts": [{"type": "text", "text": "bye"}]})
    assert last_text(client, session["sessionId"]) == "bye"


def test_a_remote_service_connects_over_websocket(daemon):
    client = daemon.client
    issued = client.call("token.issue", scope={"kind": "service", "skill": "py-remote", "ownerType": "system"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AOS_")}
    env.update({
        "AOS_SERVICE_URL": daemon.url.replace("http://", "ws://") + "/services",
        "AOS_SERVICE_TOKEN": issued["token"],
        "AOS_SKILL_NAME": "py-remote",
        "PYTHONPATH": str(REPO / "sdk-py"),
    })
    remote = subprocess.Popen([sys.executable, "-c", SERVICE.replace("tagger.run()", "tagger.run()")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        listed = eventually(
            lambda: [s for s in client.call("service.list", skill="py-remote") if s["state"] == "running"],
            "the remote service to connect")
        assert listed[0]["transport"] == "websocket"
        agent = client.call("agent.create")
        session = client.call("session.create", agentId=agent["agentId"])
        client.call("session.append", sessionId=session["sessionId"],
                    message={"role": "user", "parts": [{"type": "text", "text": "over ws"}]})
        assert last_text(client, session["sessionId"]) == "[py] over ws"
        assert client.call("py-remote.seen")["skill"] == "py-remote"
        client.call("skill.stop", serviceId=listed[0]["serviceId"])
        assert remote.wait(10) == 0, remote.stderr.read().decode()
    finally:
        if remote.poll() is None:
            remote.kill()
            remote.wait()
