"""py-guard: refuses bash commands that match the deny patterns in rules.json."""

import json
import os
import re

from aos_sdk import AosError, define_service, hook, reject


def load_rules():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rules.json")
    with open(path, encoding="utf-8") as handle:
        rules = json.load(handle).get("deny", [])
    return [(re.compile(rule["pattern"]), rule["pattern"], rule.get("reason", "denied")) for rule in rules]


@define_service
def guard(ctx):
    rules = load_rules()

    def verdict(command):
        for regex, pattern, reason in rules:
            if regex.search(command):
                return {"allowed": False, "rule": pattern, "reason": reason}
        return {"allowed": True}

    def tool_before(input, output):
        command = ((output or {}).get("args") or {}).get("command", "")
        decision = verdict(command)
        if decision["allowed"]:
            return None
        return reject(f"py-guard refused this command: {decision['reason']} (rule {decision['rule']!r})")

    @ctx.op("check", "Would py-guard allow this bash command? Params: {command}.")
    def check(params, caller):
        command = params.get("command")
        if not isinstance(command, str):
            raise AosError("invalid.params", "`command` must be a string holding a bash command")
        return verdict(command)

    ctx.log(f"py-guard: {len(rules)} deny rules loaded")
    return {"tool.before": hook(tool_before, priority=-100, timeout_ms=2000)}


if __name__ == "__main__":
    guard.run()
