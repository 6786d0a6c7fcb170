//! The hook catalogue: every admission hook, transform hook and event the kernel knows,
//! with the owner levels allowed to register it and the shape of its data.
//!
//! Adding a hook means adding a line here; every `match` on these enums then fails to
//! compile until it handles the new hook.

use aos_sdk::protocol::OwnerType;

/// The three semantic classes of extension points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookClass {
    /// May allow, rewrite `output`, or reject the operation. Fails closed.
    Admission,
    /// Rewrites the data flowing through. Fails open (keeps the original data).
    Transform,
    /// Observes. Best effort, never blocks the operation.
    Event,
}

impl HookClass {
    pub const fn as_str(self) -> &'static str {
        match self {
            HookClass::Admission => "admission",
            HookClass::Transform => "transform",
            HookClass::Event => "event",
        }
    }
}

const ALL_OWNERS: &[OwnerType] = &[OwnerType::System, OwnerType::Agent, OwnerType::Session];
const SYSTEM_ONLY: &[OwnerType] = &[OwnerType::System];
const SYSTEM_AGENT: &[OwnerType] = &[OwnerType::System, OwnerType::Agent];

/// Static description of one hook.
#[derive(Debug, Clone, Copy)]
pub struct HookSpec {
    pub name: &'static str,
    pub class: HookClass,
    /// Owner levels allowed to register it.
    pub owners: &'static [OwnerType],
    pub when: &'static str,
    /// Fields of `input` (admission, transform) or of the event payload.
    pub input: &'static str,
    /// Fields of `output` a handler may rewrite (empty for events and pure checks).
    pub output: &'static str,
}

macro_rules! hooks {
    (
        $enum:ident, $class:expr, {
            $( $variant:ident = $name:literal, $owners:expr, $when:literal, $input:literal, $output:literal; )*
        }
    ) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $enum { $($variant),* }

        impl $enum {
            pub const ALL: &'static [$enum] = &[$($enum::$variant),*];

            pub const fn spec(self) -> HookSpec {
                match self {
                    $($enum::$variant => HookSpec {
                        name: $name,
                        class: $class,
                        owners: $owners,
                        when: $when,
                        input: $input,
                        output: $output,
                    },)*
                }
            }

            pub const fn name(self) -> &'static str {
                self.spec().name
            }
        }
    };
}

hooks!(Admission, HookClass::Admission, {
    SkillIndexRefreshBefore = "skill.index.refresh.before", SYSTEM_ONLY,
        "before the skill root is rescanned", "skillRoot", "";
    SkillDiscoveryBefore = "skill.discovery.before", ALL_OWNERS,
        "before a catalog refresh computes the visible skills", "agentId?, sessionId?, query", "query";
    SkillDefaultResolveBefore = "skill.default.resolve.before", ALL_OWNERS,
        "bootstrap and reinject, before the default skill set is resolved", "agentId, sessionId, plannedNames", "";
    SkillLoadBefore = "skill.load.before", ALL_OWNERS,
        "before a skill's text is loaded into a session (explicit, default or reinject)", "agentId, sessionId, name, cause", "";
    SkillStartBefore = "skill.start.before", ALL_OWNERS,
        "before a service is started", "skill, ownerType, ownerId?, agentId?, sessionId?", "";
    SkillStopBefore = "skill.stop.before", ALL_OWNERS,
        "before a service is stopped", "serviceId, skill, agentId?, sessionId?", "";
    SessionDispatchBefore = "session.dispatch.before", ALL_OWNERS,
        "dispatch admission", "agentId, sessionId, userMessage", "";
    SessionBootstrapBefore = "session.bootstrap.before", ALL_OWNERS,
        "before default skills are injected into a new session", "agentId, sessionId, plannedNames", "";
    SessionReinjectBefore = "session.reinject.before", ALL_OWNERS,
        "before skills are reinjected after a compaction boundary", "agentId, sessionId, plannedNames", "";
    SessionMessageBeforeWrite = "session.message.beforeWrite", ALL_OWNERS,
        "before every history write", "agentId, sessionId, message", "message";
    SessionCompactionBefore = "session.compaction.before", ALL_OWNERS,
        "before compaction", "agentId, sessionId, fromSeq, toSeq", "";
    ComputeBefore = "compute.before", ALL_OWNERS,
        "before every model call, before its compute gate; the output may set the gate `priority` and hold the call (`retryAfterMs`, then asked again)", "agentId, sessionId, dispatchId, lastSeq, model, provider, requestType, priority, deadline, turn, heldMs", "priority?, retryAfterMs?";
    ToolBefore = "tool.before", ALL_OWNERS,
        "before a bash command runs", "agentId, sessionId, dispatchId, toolCallId, args", "args";
});

hooks!(Transform, HookClass::Transform, {
    SessionSystemTransform = "session.system.transform", ALL_OWNERS,
        "before a model call, building the system prompt", "agentId, sessionId, userMessage?", "system";
    SessionMessagesTransform = "session.messages.transform", ALL_OWNERS,
        "before a model call, after projection", "agentId, sessionId", "messages";
    ComputeParamsTransform = "compute.params.transform", ALL_OWNERS,
        "after the model request params are built", "agentId, sessionId", "params";
    ToolEnv = "tool.env", ALL_OWNERS,
        "before a bash command runs, to add environment variables", "agentId, sessionId, toolCallId, args", "env";
    ToolAfter = "tool.after", ALL_OWNERS,
        "after a bash command ran, to shape the result the model sees", "agentId, sessionId, toolCallId, rawResult, autoFoldThreshold", "result | contentId, sizeChars, lineCount, preview";
    ContextAssemble = "context.assemble", ALL_OWNERS,
        "whenever the model's context must be built or updated (the chain starts from `messages: null`; null at the end means the kernel's neutral projection)", "agentId, sessionId, dispatchId?, trigger, triggerData?, tokenBudget, model?, lastSeq", "messages, estimatedTokens?, compact?, contextRevision?, foldedRefCount?";
    ContextCompact = "context.compact", ALL_OWNERS,
        "compaction (threshold or manual)", "agentId, sessionId, reason, proposedFromSeq, proposedToSeq, model?, tokenBudget", "mode, summaryPrompt?, summaryText?, fromSeq, toSeq, reinjectSkills";
    SkillDiscoveryResolve = "skill.discovery.resolve", ALL_OWNERS,
        "when a catalog refresh selects skills", "agentId?, sessionId?, query, candidates", "selected";
    ComputeModelResolve = "compute.model.resolve", ALL_OWNERS,
        "before every model call, to choose provider and model", "agentId, sessionId, requestType", "model, params?";
});

hooks!(EventName, HookClass::Event, {
    AosStarted = "aos.started", SYSTEM_ONLY, "the daemon is ready", "nodeId, catalogSize", "";
    AosStopping = "aos.stopping", SYSTEM_ONLY, "the daemon is about to stop", "reason", "";
    SystemUpdated = "system.updated", SYSTEM_ONLY, "the system control block changed", "revision, changed", "";
    SkillIndexRefreshAfter = "skill.index.refresh.after", SYSTEM_ONLY,
        "the skill index was rebuilt (on request or because files changed)", "indexedCount, errorCount, added, changed, removed, cause", "";
    SkillDiscoveryAfter = "skill.discovery.after", ALL_OWNERS,
        "a catalog refresh finished", "agentId?, sessionId?, catalog", "";
    SkillDefaultResolveAfter = "skill.default.resolve.after", ALL_OWNERS,
        "the default skill set was resolved (bootstrap, reinject)", "agentId, sessionId, resolvedNames", "";
    SkillLoadAfter = "skill.load.after", ALL_OWNERS,
        "a skill's text entered a session", "agentId, sessionId, name, cause, seq", "";
    SkillUnloadAfter = "skill.unload.after", ALL_OWNERS,
        "a skill's text left a session's context", "agentId, sessionId, name, seq", "";
    SkillStartAfter = "skill.start.after", ALL_OWNERS,
        "a service started and said hello", "serviceId, skill, ownerType, ownerId?, transport, pid?, cause", "";
    SkillStopAfter = "skill.stop.after", ALL_OWNERS,
        "a service stopped", "serviceId, skill, ownerType, ownerId?, reason", "";
    AgentStarted = "agent.started", SYSTEM_AGENT, "an agent was created", "agentId, cause", "";
    AgentUpdated = "agent.updated", SYSTEM_AGENT, "an agent's settings changed", "agentId, revision, changed", "";
    AgentArchived = "agent.archived", SYSTEM_AGENT, "an agent was archived", "agentId", "";
    SessionStarted = "session.started", ALL_OWNERS, "a session finished bootstrapping", "agentId, sessionId, cause", "";
    SessionUpdated = "session.updated", ALL_OWNERS, "a session's settings or phase changed", "agentId, sessionId, revision, changed", "";
    SessionArchived = "session.archived", ALL_OWNERS, "a session was archived", "agentId, sessionId", "";
    SessionDispatchAfter = "session.dispatch.after", ALL_OWNERS,
        "a dispatch finished (after the lease is released)", "agentId, sessionId, dispatchId, status, appendedCount", "";
    SessionBootstrapAfter = "session.bootstrap.after", ALL_OWNERS,
        "default skills were injected", "agentId, sessionId, injectedNames, skipped", "";
    SessionReinjectAfter = "session.reinject.after", ALL_OWNERS,
        "skills were reinjected after compaction", "agentId, sessionId, injectedNames", "";
    SessionCompactionAfter = "session.compaction.after", ALL_OWNERS,
        "compaction finished", "agentId, sessionId, compactionSeq", "";
    SessionError = "session.error", ALL_OWNERS, "a run failed", "agentId, sessionId, source, recoverable, message", "";
    SessionInterrupted = "session.interrupted", ALL_OWNERS, "a session was interrupted", "agentId, sessionId, reason, seq", "";
    ContextIngest = "context.ingest", ALL_OWNERS,
        "a message was written to history", "agentId, sessionId, message, seq", "";
    ContextAfterTurn = "context.afterTurn", ALL_OWNERS,
        "a ReAct turn completed", "agentId, sessionId, dispatchId, turnIndex, toolCalls, appendedCount, finalAnswer", "";
    ComputeWaiting = "compute.waiting", ALL_OWNERS,
        "a model call waits for its provider's compute gate", "agentId, sessionId, dispatchId, provider, position, priority", "";
    ComputeHeld = "compute.held", ALL_OWNERS,
        "a `compute.before` handler holds a model call for a while (rate limits)", "agentId, sessionId, dispatchId, provider, retryAfterMs, heldMs, reason", "";
    ComputeAfter = "compute.after", ALL_OWNERS,
        "a model call finished", "agentId, sessionId, dispatchId, model, provider, requestType, usage, turn, toolCalls, retries", "";
    ServiceError = "service.error", ALL_OWNERS,
        "a service crashed, timed out or failed a hook", "serviceId?, skill, hook?, message, exitCode?", "";
    ServiceRegistered = "service.registered", ALL_OWNERS,
        "a service registered (or changed) its hooks, events and operations", "serviceId, skill, hooks, events, ops", "";
    ServiceRestarting = "service.restarting", ALL_OWNERS,
        "a crashed service will be restarted after a backoff", "serviceId, skill, restarts, delayMs, reason", "";
    HookWaiting = "hook.waiting", ALL_OWNERS,
        "an interactive hook registration (one that asks a person) is being called", "hook, skill, serviceId, timeoutMs", "";
    ServiceFailed = "service.failed", ALL_OWNERS,
        "a service crashed too often and is no longer restarted", "serviceId, skill, crashes, lastError", "";
    TokenIssued = "token.issued", SYSTEM_ONLY, "a token was issued", "tokenId, scope, label?", "";
    TokenRevoked = "token.revoked", SYSTEM_ONLY, "a token was revoked", "tokenId", "";
});

/// Any catalogued hook, looked up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookRef {
    Admission(Admission),
    Transform(Transform),
    Event(EventName),
}

impl HookRef {
    pub fn lookup(name: &str) -> Option<Self> {
        Admission::ALL
            .iter()
            .find(|h| h.name() == name)
            .map(|h| HookRef::Admission(*h))
            .or_else(|| {
                Transform::ALL
                    .iter()
                    .find(|h| h.name() == name)
                    .map(|h| HookRef::Transform(*h))
            })
            .or_else(|| {
                EventName::ALL
                    .iter()
                    .find(|h| h.name() == name)
                    .map(|h| HookRef::Event(*h))
            })
    }

    pub const fn spec(self) -> HookSpec {
        match self {
            HookRef::Admission(h) => h.spec(),
            HookRef::Transform(h) => h.spec(),
            HookRef::Event(h) => h.spec(),
        }
    }

    /// Every catalogued hook, admission first.
    pub fn all() -> impl Iterator<Item = HookRef> {
        Admission::ALL
            .iter()
            .map(|h| HookRef::Admission(*h))
            .chain(Transform::ALL.iter().map(|h| HookRef::Transform(*h)))
            .chain(EventName::ALL.iter().map(|h| HookRef::Event(*h)))
    }
}

/// `docs/hooks.md`, generated from the catalogue (`aos hooks --markdown`).
pub fn markdown() -> String {
    use std::fmt::Write;
    let mut out = String::new();
    out.push_str("# Hooks\n\n");
    out.push_str(
        "<!-- Generated by `aos hooks --markdown` from the kernel's hook catalogue. Do not edit by hand: \
         a test fails when this file and the catalogue differ. -->\n\n",
    );
    out.push_str(
        "Services extend the kernel through three kinds of hooks. **Admission** hooks may allow, rewrite \
         `output` or reject an operation; they fail closed (a timeout or a crashed service rejects). \
         **Transform** hooks rewrite the data flowing through; they fail open (a failing handler is skipped and \
         the data passed on unchanged). **Events** only observe and never block.\n\n\
         Handlers run in owner order system → agent → session, then by `priority` (lower first), then in \
         registration order. An admission chain stops at the first reject; a transform chain passes each \
         handler's output to the next. Each registration has its own deadline (default 5 s, at most 60 s; \
         registrations that wait for a person may ask for up to an hour). A system-owned registration fires for \
         every operation, an agent-owned one only for that agent's operations, a session-owned one only for \
         that session's. When nobody listens to a hook, the kernel does not even build its data.\n\n\
         Replies: admission `{\"action\": \"allow\" | \"reject\", \"reason\"?, \"output\"?}`; transform \
         `{\"output\"?}` (absent or null keeps the data).\n\n",
    );
    for (title, class) in [
        ("Admission hooks", HookClass::Admission),
        ("Transform hooks", HookClass::Transform),
        ("Events", HookClass::Event),
    ] {
        let _ = write!(out, "## {title}\n\n");
        if class == HookClass::Event {
            out.push_str("| event | owners | when | payload |\n|---|---|---|---|\n");
        } else {
            out.push_str("| hook | owners | when | input | output |\n|---|---|---|---|---|\n");
        }
        for hook in HookRef::all().filter(|h| h.spec().class == class) {
            let spec = hook.spec();
            let owners = spec
                .owners
                .iter()
                .map(|o| o.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if class == HookClass::Event {
                let _ = writeln!(
                    out,
                    "| `{}` | {owners} | {} | {} |",
                    spec.name, spec.when, spec.input
                );
            } else {
                let output = if spec.output.is_empty() {
                    "-"
                } else {
                    spec.output
                };
                let _ = writeln!(
                    out,
                    "| `{}` | {owners} | {} | {} | {output} |",
                    spec.name, spec.when, spec.input
                );
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_catalogue_holds_the_seed_hooks_with_unique_names() {
        assert_eq!(Admission::ALL.len(), 13);
        assert_eq!(Transform::ALL.len(), 9);
        let names: Vec<_> = HookRef::all().map(|h| h.spec().name).collect();
        let unique: HashSet<_> = names.iter().collect();
        assert_eq!(names.len(), unique.len());
        assert_eq!(
            HookRef::lookup("tool.before"),
            Some(HookRef::Admission(Admission::ToolBefore))
        );
        assert_eq!(HookRef::lookup("tool.nope"), None);
    }
}
