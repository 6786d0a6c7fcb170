//! Session lifecycle: default-skill resolution, bootstrap, compaction, and start-up
//! recovery.

pub mod bootstrap;
pub mod compaction;
pub mod defaults;
pub mod recovery;
