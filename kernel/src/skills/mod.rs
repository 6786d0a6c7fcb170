//! Skills: the `SKILL.md` parser and the index of skillRoot.

pub mod index;
pub mod manifest;
pub mod reload;
pub mod watcher;

pub use index::{Changes, IndexedSkill, SkillIndex, Snapshot};
