//! Hooks: the catalogue of extension points and the engine that calls registered
//! handlers in order, under deadlines.

mod catalog;
mod engine;

pub use catalog::{Admission, EventName, HookClass, HookRef, HookSpec, Transform, markdown};
pub use engine::{
    DEFAULT_TIMEOUT, Explained, HookEngine, HookHandler, HookRejection, HookScope,
    INTERACTIVE_MAX_TIMEOUT, MAX_TIMEOUT, NewRegistration, RegisterError,
};
