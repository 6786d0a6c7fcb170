//! Strict syscall params decoding: the kernel's `syscall::decode` (what every operation
//! runs on its params) into each operation's params struct. It must never panic, and
//! params it accepted must be accepted again, unchanged, after being re-encoded (a
//! client that echoes what it read back must not be refused).
//!
//! Input: the first line names the operation (`session.dispatch`); a line that names
//! none picks one by its bytes, so mutations still reach every struct. The rest is the
//! JSON params object.

#![no_main]

use aos_kernel::syscall::decode;
use aos_sdk::protocol::*;
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn check<P>(op: &str, params: Value)
where
    P: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let Ok(decoded) = decode::<P>(op, params) else {
        return;
    };
    let wire = serde_json::to_value(&decoded).expect("decoded params serialize");
    let again = decode::<P>(op, wire.clone())
        .unwrap_or_else(|e| panic!("`{op}` refused its own params {wire}: {}", e.message));
    assert_eq!(
        decoded, again,
        "`{op}` params changed on a round trip through {wire}"
    );
}

type Check = fn(&str, Value);

/// Every kernel operation and its params struct.
const OPS: &[(&str, Check)] = &[
    ("agent.create", check::<AgentCreateParams>),
    ("agent.get", check::<AgentIdParams>),
    ("agent.list", check::<AgentListParams>),
    ("agent.update", check::<AgentUpdateParams>),
    ("content.put", check::<ContentPutParams>),
    ("content.get", check::<ContentIdParams>),
    ("content.read", check::<ContentReadParams>),
    ("content.search", check::<ContentSearchParams>),
    ("session.context.get", check::<SessionIdParams>),
    ("session.context.fold", check::<ContextRefParams>),
    ("session.compact", check::<SessionCompactParams>),
    ("session.dispatch", check::<SessionDispatchParams>),
    ("dispatch.get", check::<DispatchIdParams>),
    ("dispatch.list", check::<DispatchListParams>),
    ("session.history.list", check::<HistoryListParams>),
    ("session.history.get", check::<HistoryGetParams>),
    ("session.history.search", check::<HistorySearchParams>),
    ("hook.list", check::<HookListParams>),
    ("event.publish", check::<EventPublishParams>),
    ("usage.get", check::<UsageParams>),
    ("log.list", check::<LogListParams>),
    ("session.create", check::<SessionCreateParams>),
    ("session.list", check::<SessionListParams>),
    ("session.update", check::<SessionUpdateParams>),
    ("session.append", check::<SessionAppendParams>),
    ("session.interrupt", check::<SessionInterruptParams>),
    ("skill.list", check::<NoParams>),
    ("skill.get", check::<SkillNameParams>),
    ("skill.load", check::<SkillLoadParams>),
    ("skill.catalog.list", check::<CatalogParams>),
    ("skill.default.resolve", check::<DefaultResolveParams>),
    ("skill.start", check::<SkillStartParams>),
    ("service.list", check::<ServiceListParams>),
    ("service.get", check::<ServiceIdParams>),
    ("system.update", check::<SystemUpdateParams>),
    ("token.issue", check::<TokenIssueParams>),
    ("token.revoke", check::<TokenIdParams>),
];

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let (op, check) = OPS
        .iter()
        .find(|(name, _)| name.as_bytes() == head)
        .copied()
        .unwrap_or_else(|| {
            let pick = head.iter().map(|&b| usize::from(b)).sum::<usize>() % OPS.len();
            OPS[pick]
        });
    // `/aoscp` reads the body as JSON, then hands the params to the operation.
    let Ok(params) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    check(op, params);
});
