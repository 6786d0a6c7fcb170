//! Wire types shared by the kernel and every client: defined once, here.
//!
//! Nothing in this module does I/O. Field names are camelCase on the wire.

pub mod dispatch;
mod envelope;
pub mod ops;
pub mod records;
pub mod service;
mod time;

pub use dispatch::*;
pub use envelope::{Envelope, ErrorBody, ErrorCode};
pub use ops::*;
pub use records::*;
pub use service::{
    RegisterResult, ServiceInfo, ServiceListParams, ServiceOwnerInfo, ServiceState,
    ServiceTransport,
};
pub use time::Timestamp;

/// Prefixes of the kernel's opaque ids, one per object type.
pub mod id_prefix {
    pub const AGENT: &str = "agt_";
    pub const SESSION: &str = "ses_";
    pub const MESSAGE: &str = "msg_";
    pub const PART: &str = "prt_";
    pub const DISPATCH: &str = "dsp_";
    pub const CONTENT: &str = "cnt_";
    pub const SERVICE: &str = "svc_";
    pub const LOG: &str = "log_";
    pub const TOKEN: &str = "tok_";
}

/// True when the event `name` matches `pattern`: `*` matches every name, `a.b.*`
/// matches `a.b.` followed by anything, any other pattern only itself.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some("") => true,
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}
