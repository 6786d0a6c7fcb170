//! The skill index: every skill directory under skillRoot, parsed, with broken ones
//! kept visible. A refresh builds a new snapshot and swaps it in, so readers never see
//! a half-built index.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use aos_sdk::protocol::{SkillError, SkillManifest};

use super::manifest::{self, MAX_SKILL_FILE_BYTES, Parsed};

/// Directory levels below skillRoot searched for `SKILL.md` (so `skills/examples/x`
/// works).
const MAX_DEPTH: usize = 4;
/// Directories visited per scan at most, to bound a scan of a huge tree.
const MAX_DIRS: usize = 5_000;
const SKIPPED_DIRS: &[&str] = &["node_modules", "target", "__pycache__", "venv", ".venv"];

/// Files per skill looked at for its fingerprint at most.
const MAX_FINGERPRINT_FILES: usize = 5_000;

/// One indexed skill.
#[derive(Debug, Clone)]
pub struct IndexedSkill {
    pub manifest: SkillManifest,
    /// The skill text; `None` when the skill is broken.
    pub text: Option<Arc<str>>,
    /// Canonical skill directory.
    pub dir: PathBuf,
    /// Changes whenever a file of the skill changes (path, size, modification time of
    /// every file outside ignored paths), so a rescan tells which skills changed.
    pub fingerprint: u64,
}

impl IndexedSkill {
    pub fn is_usable(&self) -> bool {
        self.manifest.error.is_none() && self.text.is_some()
    }
}

/// An immutable view of the index.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every skill found, usable or not, sorted by directory.
    pub all: Vec<Arc<IndexedSkill>>,
    /// Usable skills by name.
    pub by_name: BTreeMap<String, Arc<IndexedSkill>>,
}

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<&Arc<IndexedSkill>> {
        self.by_name.get(name)
    }

    /// The `scripts/` directories of usable skills, by skill name: bash's PATH holds
    /// them, so a skill's scripts run by name.
    pub fn script_dirs(&self) -> Vec<PathBuf> {
        self.by_name
            .values()
            .map(|skill| skill.dir.join("scripts"))
            .filter(|dir| dir.is_dir())
            .collect()
    }

    pub fn usable_count(&self) -> usize {
        self.by_name.len()
    }

    pub fn error_count(&self) -> usize {
        self.all.len() - self.by_name.len()
    }
}

/// What a refresh changed, by skill name (usable skills only: a skill that broke
/// counts as removed, one that was fixed as added).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    /// The set of broken skills or their errors changed.
    pub errors_changed: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && !self.errors_changed
    }

    fn between(old: &Snapshot, new: &Snapshot) -> Self {
        let mut changes = Changes::default();
        for (name, skill) in &new.by_name {
            match old.by_name.get(name) {
                None => changes.added.push(name.clone()),
                Some(before)
                    if before.fingerprint != skill.fingerprint
                        || before.dir != skill.dir
                        || before.manifest != skill.manifest =>
                {
                    changes.changed.push(name.clone());
                }
                Some(_) => {}
            }
        }
        changes.removed = old
            .by_name
            .keys()
            .filter(|name| !new.by_name.contains_key(*name))
            .cloned()
            .collect();
        let errors = |s: &Snapshot| -> Vec<SkillManifest> {
            s.all
                .iter()
                .filter(|k| !k.is_usable())
                .map(|k| k.manifest.clone())
                .collect()
        };
        changes.errors_changed = errors(old) != errors(new);
        changes
    }
}

/// The index of one skill root.
#[derive(Debug)]
pub struct SkillIndex {
    root: PathBuf,
    // Swapped wholesale; readers clone the `Arc` and release the lock at once.
    current: RwLock<Arc<Snapshot>>,
}

impl SkillIndex {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            current: RwLock::new(Arc::new(Snapshot::default())),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rescans the root (blocking file I/O: call from `spawn_blocking`), swaps in the
    /// result, and says what changed.
    pub fn refresh(&self) -> (Arc<Snapshot>, Changes) {
        let snapshot = Arc::new(scan(&self.root));
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let changes = Changes::between(&current, &snapshot);
        *current = snapshot.clone();
        (snapshot, changes)
    }
}

fn scan(root: &Path) -> Snapshot {
    let Ok(root) = root.canonicalize() else {
        tracing::warn!(root = %root.display(), "skill root does not exist; the skill index is empty");
        return Snapshot::default();
    };
    let mut found: Vec<IndexedSkill> = Vec::new();
    let mut visited: HashSet<PathBuf> = HashSet::new();
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.clone(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if visited.len() >= MAX_DIRS {
            tracing::warn!(root = %root.display(), "skill scan stopped after {MAX_DIRS} directories");
            break;
        }
        let Ok(canonical) = dir.canonicalize() else {
            continue;
        };
        if !visited.insert(canonical.clone()) {
            continue;
        }
        if canonical != root && !canonical.starts_with(&root) {
            found.push(broken(
                &dir,
                format!(
                    "the skill directory resolves to {} which is outside the skill root",
                    canonical.display()
                ),
            ));
            continue;
        }
        if depth > 0 && canonical.join("SKILL.md").is_file() {
            found.push(load(&canonical));
            continue;
        }
        if depth >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&canonical) else {
            continue;
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_ref())
            })
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        // Reverse so the stack pops in name order.
        children.sort();
        children.reverse();
        stack.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    let mut snapshot = Snapshot::default();
    for mut skill in found {
        if skill.is_usable() {
            if let Some(first) = snapshot.by_name.get(&skill.manifest.name) {
                skill.manifest.error = Some(SkillError {
                    file: skill.dir.join("SKILL.md").display().to_string(),
                    line: None,
                    message: format!(
                        "another skill named `{}` is already indexed from {}",
                        skill.manifest.name,
                        first.dir.display()
                    ),
                });
                skill.text = None;
            } else {
                let skill = Arc::new(skill);
                snapshot
                    .by_name
                    .insert(skill.manifest.name.clone(), skill.clone());
                snapshot.all.push(skill);
                continue;
            }
        }
        snapshot.all.push(Arc::new(skill));
    }
    snapshot
}

fn load(dir: &Path) -> IndexedSkill {
    let file = dir.join("SKILL.md");
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    if size > MAX_SKILL_FILE_BYTES {
        return broken(
            dir,
            format!("SKILL.md is {size} bytes; at most {MAX_SKILL_FILE_BYTES} are read"),
        );
    }
    let source = match std::fs::read(&file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                return broken(
                    dir,
                    format!(
                        "SKILL.md is not valid UTF-8 (at byte {})",
                        e.utf8_error().valid_up_to()
                    ),
                );
            }
        },
        Err(e) => return broken(dir, format!("cannot read SKILL.md: {e}")),
    };
    let Parsed { manifest, text } = manifest::parse(dir, &source);
    IndexedSkill {
        manifest,
        text: text.map(Arc::from),
        dir: dir.to_owned(),
        fingerprint: fingerprint(dir),
    }
}

/// True for paths that never make a skill change: hidden files and directories,
/// dependency and build directories, Python bytecode, editor leftovers. Services may
/// write there (a Python service writes `__pycache__`) without restarting themselves.
pub fn is_ignored(relative: &Path) -> bool {
    relative.components().any(|c| {
        let name = c.as_os_str().to_string_lossy();
        name.starts_with('.') || SKIPPED_DIRS.contains(&name.as_ref())
    }) || relative.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.ends_with(".pyc") || n.ends_with(".swp") || n.ends_with('~') || n.ends_with(".tmp")
    })
}

fn fingerprint(dir: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    let mut files: Vec<(PathBuf, u64, i128)> = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(relative) = path.strip_prefix(dir) else {
                continue;
            };
            if is_ignored(relative) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if files.len() < MAX_FINGERPRINT_FILES {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos() as i128)
                    .unwrap_or(-1);
                files.push((relative.to_owned(), meta.len(), modified));
            }
        }
    }
    files.sort();
    files.hash(&mut hasher);
    hasher.finish()
}

fn broken(dir: &Path, message: String) -> IndexedSkill {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    IndexedSkill {
        manifest: SkillManifest {
            name,
            description: String::new(),
            license: None,
            compatibility: None,
            metadata: BTreeMap::new(),
            allowed_tools: None,
            service: None,
            dir: dir.display().to_string(),
            text_chars: 0,
            extra: BTreeMap::new(),
            warnings: Vec::new(),
            error: Some(SkillError {
                file: dir.join("SKILL.md").display().to_string(),
                line: None,
                message,
            }),
        },
        text: None,
        dir: dir.to_owned(),
        fingerprint: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_skill(root: &Path, rel: &str, name: &str) {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("SKILL.md"),
            format!("---\nname: {name}\ndescription: the {name} skill\n---\n# {name}\n"),
        )
        .unwrap();
    }

    #[test]
    fn finds_nested_skills_and_keeps_broken_ones_visible() {
        let root = tempfile::tempdir().unwrap();
        write_skill(root.path(), "aos", "aos");
        write_skill(root.path(), "examples/py-guard", "py-guard");
        write_skill(root.path(), "wrong-dir", "right-name");
        write_skill(root.path(), "node_modules/hidden", "hidden");
        write_skill(root.path(), ".git/hidden2", "hidden2");
        std::fs::create_dir_all(root.path().join("empty")).unwrap();
        let index = SkillIndex::new(root.path().to_owned());
        let (snapshot, _) = index.refresh();
        let names: Vec<_> = snapshot.by_name.keys().cloned().collect();
        assert_eq!(names, vec!["aos", "py-guard"]);
        assert_eq!(snapshot.error_count(), 1);
        let broken = snapshot.all.iter().find(|s| !s.is_usable()).unwrap();
        assert!(
            broken
                .manifest
                .error
                .as_ref()
                .unwrap()
                .message
                .contains("must match")
        );
        assert_eq!(
            &*snapshot.get("aos").unwrap().text.clone().unwrap(),
            "# aos"
        );
    }

    #[test]
    fn duplicate_names_keep_the_first_and_flag_the_second() {
        let root = tempfile::tempdir().unwrap();
        write_skill(root.path(), "a/dup", "dup");
        write_skill(root.path(), "b/dup", "dup");
        let (snapshot, _) = SkillIndex::new(root.path().to_owned()).refresh();
        assert_eq!(snapshot.usable_count(), 1);
        assert!(snapshot.get("dup").unwrap().dir.ends_with("a/dup"));
        assert_eq!(snapshot.error_count(), 1);
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        write_skill(outside.path(), "evil", "evil");
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("evil"), root.path().join("evil")).unwrap();
        let (snapshot, _) = SkillIndex::new(root.path().to_owned()).refresh();
        assert_eq!(snapshot.usable_count(), 0);
        let message = &snapshot.all[0].manifest.error.as_ref().unwrap().message;
        assert!(message.contains("outside the skill root"), "{message}");
    }

    #[test]
    fn refreshes_report_added_changed_and_removed_skills() {
        let root = tempfile::tempdir().unwrap();
        write_skill(root.path(), "a", "a");
        write_skill(root.path(), "b", "b");
        let index = SkillIndex::new(root.path().to_owned());
        let (_, first) = index.refresh();
        assert_eq!(first.added, vec!["a", "b"]);
        let (_, nothing) = index.refresh();
        assert!(nothing.is_empty(), "{nothing:?}");
        // A service file changes; bytecode and hidden files do not count.
        std::fs::write(root.path().join("a/service.py"), "print(1)").unwrap();
        std::fs::create_dir_all(root.path().join("b/__pycache__")).unwrap();
        std::fs::write(root.path().join("b/__pycache__/x.pyc"), "junk").unwrap();
        std::fs::write(root.path().join("b/.notes.swp"), "junk").unwrap();
        write_skill(root.path(), "c", "c");
        std::fs::write(root.path().join("b/SKILL.md"), "broken now").unwrap();
        let (_, changes) = index.refresh();
        assert_eq!(changes.added, vec!["c"]);
        assert_eq!(changes.changed, vec!["a"]);
        assert_eq!(changes.removed, vec!["b"]);
        assert!(changes.errors_changed);
    }

    #[test]
    fn a_missing_root_is_an_empty_index() {
        let (snapshot, _) = SkillIndex::new(PathBuf::from("/nonexistent/skills")).refresh();
        assert!(snapshot.all.is_empty());
    }
}
