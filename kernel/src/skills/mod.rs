//! Skills: the `SKILL.md` parser and the index of skillRoot.

pub mod index;
pub mod manifest;

pub use index::{IndexedSkill, SkillIndex, Snapshot};
