//! The AOS SDK, for programs and services that talk to an AOS kernel.
//!
//! - [`protocol`] holds every wire type (the syscall envelope, error codes, control
//!   blocks, history messages, events and the params/results of each syscall). It does
//!   no I/O and is shared by the kernel and every client, so both sides agree by
//!   construction.
//! - [`client`] is an HTTP client for the kernel's public API (`POST /aoscp`,
//!   `GET /events`).

pub mod client;
pub mod protocol;
pub mod rpc;
pub mod service;

pub use client::{Client, ClientError};
pub use protocol::{Envelope, ErrorBody, ErrorCode};
