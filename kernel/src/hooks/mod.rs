//! Hooks: the catalogue of extension points and the engine that calls registered
//! handlers in order, under deadlines.

mod catalog;
mod engine;

pub use catalog::{Admission, EventName, HookClass, HookRef, HookSpec, Transform};
pub use engine::{
    DEFAULT_TIMEOUT, Explained, HookEngine, HookHandler, HookRejection, HookScope,
    INTERACTIVE_MAX_TIMEOUT, MAX_TIMEOUT, NewRegistration, RegisterError,
};

/// `docs/hooks.md`: the catalogue's tables, then the notes on where the service hooks
/// are asked.
pub fn markdown() -> String {
    let mut out = catalog::markdown();
    out.push_str(SERVICE_ADMISSION);
    out
}

const SERVICE_ADMISSION: &str = "## When `skill.start.before` and `skill.stop.before` are asked\n\n\
The supervisor asks them, so every start and stop passes them, whoever asks for it:\n\n\
- `skill.start.before` before `skill.start`, before start reconcile starts a default service (an owner \
created, its defaults changed, a skill appearing in the index, kernel start-up), before a failed service \
starts again on request, and before a remote service connecting over `/services` is accepted (a rejection \
refuses its `hello`). Input also carries `cause` (`skill.start`, `default skills`, `connected`). Starting a \
service that already runs asks nothing: nothing starts.\n\
- `skill.stop.before` before `skill.stop`, before start reconcile stops a default service the defaults no \
longer ask for (a rejection keeps it running; the next reconcile asks again), before a skill removed from \
the index (or newly broken) has its services stopped (a rejected one keeps running on the code it started \
with), and before an agent or session is archived, for each service it owns (a rejection rejects the \
archive with `hook.rejected`, and the owner stays as it was; services started while the archive runs are \
stopped without asking). Input also carries `ownerType`, `ownerId` and `reason`.\n\n\
Not asked: restarts of a service that runs (its files changed, so the new code takes over; a crash and \
its backoff), since the service was admitted when it started and keeps its owner; and the kernel's own \
shutdown, which stops every service regardless.\n";
