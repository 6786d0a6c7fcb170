//! Session lifecycle: default-skill resolution, bootstrap, and start-up recovery.

pub mod bootstrap;
pub mod defaults;
pub mod recovery;
