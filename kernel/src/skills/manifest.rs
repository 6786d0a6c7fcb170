//! Parsing one `SKILL.md`: YAML frontmatter (the Agent Skills fields plus `service`)
//! and the Markdown body that becomes the skill's text.
//!
//! Parsing never fails outright: a broken skill yields a manifest with `error` set
//! (file, line, what is wrong), so it stays visible in `skill.list`.

use std::collections::BTreeMap;
use std::path::Path;

use aos_sdk::protocol::{SkillError, SkillManifest};
use serde_json::Value;
use yaml_serde::Value as Yaml;

/// Largest `SKILL.md` the index reads.
pub const MAX_SKILL_FILE_BYTES: u64 = 1024 * 1024;
pub const MAX_NAME_CHARS: usize = 64;
pub const MAX_DESCRIPTION_CHARS: usize = 1024;
pub const MAX_COMPATIBILITY_CHARS: usize = 500;

/// A parsed skill: its manifest, and its text when it is usable.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub manifest: SkillManifest,
    pub text: Option<String>,
}

/// Checks a skill name against the Agent Skills rule: 1–64 of `a-z0-9-`, not starting
/// or ending with `-`, no `--`. Returns what is wrong.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "skill name `{name}` must be 1–{MAX_NAME_CHARS} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "skill name `{name}` may contain only lowercase letters, digits and `-`"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') || name.contains("--") {
        return Err(format!(
            "skill name `{name}` must not start or end with `-` or contain `--`"
        ));
    }
    Ok(())
}

/// Parses `source`, the content of `dir/SKILL.md`. `dir` must already be canonical.
pub fn parse(dir: &Path, source: &str) -> Parsed {
    let file = dir.join("SKILL.md").display().to_string();
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut manifest = SkillManifest {
        name: dir_name.clone(),
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
        error: None,
    };
    match parse_into(&mut manifest, dir, &dir_name, source) {
        Ok(text) => {
            manifest.text_chars = text.chars().count() as u64;
            Parsed {
                manifest,
                text: Some(text),
            }
        }
        Err((line, message)) => {
            manifest.error = Some(SkillError {
                file,
                line,
                message,
            });
            Parsed {
                manifest,
                text: None,
            }
        }
    }
}

type Problem = (Option<u64>, String);

fn parse_into(
    manifest: &mut SkillManifest,
    dir: &Path,
    dir_name: &str,
    source: &str,
) -> Result<String, Problem> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    if lines.first().map(|l| l.trim_end()) != Some("---") {
        return Err((
            Some(1),
            "SKILL.md must start with a `---` line opening the YAML frontmatter".into(),
        ));
    }
    let Some(close) = lines
        .iter()
        .skip(1)
        .position(|l| matches!(l.trim_end(), "---" | "..."))
        .map(|i| i + 1)
    else {
        return Err((
            Some(1),
            "the frontmatter opened on line 1 is never closed by a `---` line".into(),
        ));
    };
    // Parsing from the opening `---` (a YAML document marker) keeps line numbers equal
    // to the file's.
    let front: String = lines[..close].concat();
    let body: String = lines[close + 1..].concat();
    let yaml: Yaml = yaml_serde::from_str(&front).map_err(|e| {
        (
            e.location().map(|l| l.line() as u64),
            format!("invalid YAML in the frontmatter: {e}"),
        )
    })?;
    let mapping = match yaml {
        Yaml::Mapping(m) => m,
        Yaml::Null => {
            return Err((
                Some(2),
                "the frontmatter is empty; `name` and `description` are required".into(),
            ));
        }
        _ => {
            return Err((
                Some(2),
                "the frontmatter must be a mapping of `key: value` lines".into(),
            ));
        }
    };
    let line_of = |key: &str| -> Option<u64> {
        lines[..close]
            .iter()
            .position(|l| {
                l.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
            })
            .map(|i| i as u64 + 1)
    };
    let mut metadata_service = None;
    for (key, value) in &mapping {
        let Some(key) = key.as_str() else {
            return Err((
                None,
                format!("frontmatter keys must be strings, found {key:?}"),
            ));
        };
        let string = |what: &str| -> Result<String, Problem> {
            match value {
                Yaml::String(s) => Ok(s.clone()),
                Yaml::Number(n) => Ok(n.to_string()),
                Yaml::Bool(b) => Ok(b.to_string()),
                other => Err((
                    line_of(key),
                    format!("`{what}` must be a string, found {}", yaml_kind(other)),
                )),
            }
        };
        match key {
            "name" => manifest.name = string("name")?,
            "description" => manifest.description = string("description")?,
            "license" => manifest.license = Some(string("license")?),
            "compatibility" => manifest.compatibility = Some(string("compatibility")?),
            "allowed-tools" => manifest.allowed_tools = Some(string("allowed-tools")?),
            "service" => manifest.service = Some(string("service")?),
            "metadata" => {
                let Yaml::Mapping(entries) = value else {
                    return Err((
                        line_of(key),
                        format!(
                            "`metadata` must be a mapping of strings, found {}",
                            yaml_kind(value)
                        ),
                    ));
                };
                for (meta_key, meta_value) in entries {
                    let meta_key = meta_key.as_str().map(str::to_owned).unwrap_or_else(|| {
                        serde_json::to_string(&yaml_to_json(meta_key)).unwrap_or_default()
                    });
                    let text = match meta_value {
                        Yaml::String(s) => s.clone(),
                        Yaml::Number(n) => n.to_string(),
                        Yaml::Bool(b) => b.to_string(),
                        other => {
                            manifest.warnings.push(format!(
                                "metadata `{meta_key}` is {}; the standard wants strings, so it is kept as JSON text",
                                yaml_kind(other)
                            ));
                            serde_json::to_string(&yaml_to_json(other)).unwrap_or_default()
                        }
                    };
                    if meta_key == "aos-service" {
                        metadata_service = Some(text.clone());
                    }
                    manifest.metadata.insert(meta_key, text);
                }
            }
            other => {
                manifest.warnings.push(format!(
                    "frontmatter key `{other}` is not part of the Agent Skills standard; it is kept but AOS ignores it"
                ));
                manifest.extra.insert(other.to_owned(), yaml_to_json(value));
            }
        }
    }
    check_name(&manifest.name).map_err(|m| (line_of("name"), m))?;
    if !mapping.contains_key("name") {
        return Err((Some(1), "frontmatter lacks the required `name`".into()));
    }
    if manifest.name != dir_name {
        return Err((
            line_of("name"),
            format!(
                "skill name `{}` must match its directory name `{dir_name}`",
                manifest.name
            ),
        ));
    }
    let description_chars = manifest.description.trim().chars().count();
    if description_chars == 0 {
        return Err((
            line_of("description").or(Some(1)),
            "frontmatter needs a non-empty `description` saying what the skill does and when to use it".into(),
        ));
    }
    if description_chars > MAX_DESCRIPTION_CHARS {
        return Err((
            line_of("description"),
            format!(
                "`description` has {description_chars} characters; at most {MAX_DESCRIPTION_CHARS} are allowed"
            ),
        ));
    }
    if let Some(compatibility) = &manifest.compatibility
        && compatibility.chars().count() > MAX_COMPATIBILITY_CHARS
    {
        return Err((
            line_of("compatibility"),
            format!("`compatibility` is longer than {MAX_COMPATIBILITY_CHARS} characters"),
        ));
    }
    match (&manifest.service, metadata_service) {
        (Some(a), Some(b)) if *a != b => {
            return Err((
                line_of("service"),
                format!("`service` (`{a}`) and `metadata.aos-service` (`{b}`) disagree"),
            ));
        }
        (None, Some(b)) => manifest.service = Some(b),
        _ => {}
    }
    if let Some(service) = &manifest.service {
        check_service(dir, service, &mut manifest.warnings).map_err(|m| (line_of("service"), m))?;
    }
    Ok(body.trim().to_owned())
}

/// A service command naming a path must stay inside the skill directory (after
/// resolving `..` and symlinks). A bare program name is looked up on `PATH` at start.
fn check_service(dir: &Path, service: &str, warnings: &mut Vec<String>) -> Result<(), String> {
    let program = service.split_whitespace().next().unwrap_or_default();
    if program.is_empty() {
        return Err("`service` is empty".into());
    }
    let is_path = program.contains('/') || program.starts_with('.');
    if !is_path {
        return Ok(());
    }
    if Path::new(program).is_absolute() {
        return Err(format!(
            "`service` must be relative to the skill directory, not the absolute path `{program}`"
        ));
    }
    let candidate = dir.join(program);
    match candidate.canonicalize() {
        Ok(resolved) if resolved.starts_with(dir) => Ok(()),
        Ok(resolved) => Err(format!(
            "`service` `{program}` resolves to {} which is outside the skill directory",
            resolved.display()
        )),
        Err(_) => {
            // It may be created later; still refuse lexical escapes.
            if Path::new(program)
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(format!(
                    "`service` `{program}` leaves the skill directory through `..`"
                ));
            }
            warnings.push(format!(
                "service file `{program}` does not exist yet; the service cannot start until it does"
            ));
            Ok(())
        }
    }
}

fn yaml_kind(value: &Yaml) -> &'static str {
    match value {
        Yaml::Null => "null",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "a string",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

fn yaml_to_json(value: &Yaml) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in(name: &str, source: &str) -> Parsed {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        std::fs::write(dir.join("SKILL.md"), source).unwrap();
        std::fs::write(dir.join("svc.py"), "").unwrap();
        let parsed = parse(&dir, source);
        drop(root);
        parsed
    }

    fn error(parsed: &Parsed) -> (Option<u64>, String) {
        let e = parsed.manifest.error.clone().expect("expected an error");
        (e.line, e.message)
    }

    #[test]
    fn reads_the_standard_fields_service_and_body() {
        let parsed = parse_in(
            "demo",
            "---\nname: demo\ndescription: Does demos. Use for demos.\nlicense: MIT\ncompatibility: linux\nallowed-tools: Bash(git:*)\nmetadata:\n  author: me\n  version: 2\nservice: ./svc.py --fast\n---\n\n# Demo\n\nText.\n",
        );
        let m = &parsed.manifest;
        assert_eq!(m.error, None);
        assert_eq!(m.name, "demo");
        assert_eq!(m.description, "Does demos. Use for demos.");
        assert_eq!(m.license.as_deref(), Some("MIT"));
        assert_eq!(m.allowed_tools.as_deref(), Some("Bash(git:*)"));
        assert_eq!(m.metadata.get("version").map(String::as_str), Some("2"));
        assert_eq!(m.service.as_deref(), Some("./svc.py --fast"));
        assert_eq!(parsed.text.as_deref(), Some("# Demo\n\nText."));
        assert_eq!(m.text_chars, 13);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn metadata_aos_service_is_the_portable_spelling() {
        let parsed = parse_in(
            "demo",
            "---\nname: demo\ndescription: d\nmetadata:\n  aos-service: ./svc.py\n---\nbody",
        );
        assert_eq!(parsed.manifest.service.as_deref(), Some("./svc.py"));
    }

    #[test]
    fn unknown_keys_are_kept_as_warnings() {
        let parsed = parse_in(
            "demo",
            "---\nname: demo\ndescription: d\ndisable-model-invocation: true\n---\nbody",
        );
        assert_eq!(parsed.manifest.error, None);
        assert_eq!(parsed.manifest.warnings.len(), 1);
        assert!(parsed.manifest.warnings[0].contains("disable-model-invocation"));
        assert_eq!(
            parsed.manifest.extra.get("disable-model-invocation"),
            Some(&Value::Bool(true))
        );
    }

    #[test]
    fn broken_skills_say_where_and_what() {
        let cases: &[(&str, &str, Option<u64>, &str)] = &[
            ("demo", "no frontmatter", Some(1), "must start with a `---`"),
            ("demo", "---\nname: demo\n", Some(1), "never closed"),
            (
                "demo",
                "---\nname: demo\ndescription: [oops\n---\n",
                Some(4),
                "invalid YAML",
            ),
            (
                "demo",
                "---\nname: other\ndescription: d\n---\n",
                Some(2),
                "must match its directory",
            ),
            (
                "demo",
                "---\nname: demo\n---\n",
                Some(1),
                "non-empty `description`",
            ),
            (
                "Bad_Name",
                "---\nname: Bad_Name\ndescription: d\n---\n",
                Some(2),
                "lowercase",
            ),
            (
                "demo",
                "---\nname: demo\ndescription: [a, b]\n---\n",
                Some(3),
                "must be a string",
            ),
            ("demo", "---\n---\n", Some(2), "frontmatter is empty"),
            (
                "demo",
                "---\nname: demo\ndescription: d\nservice: ../../bin/sh\n---\n",
                Some(4),
                "leaves the skill directory",
            ),
            (
                "demo",
                "---\nname: demo\ndescription: d\nservice: /bin/sh\n---\n",
                Some(4),
                "not the absolute path",
            ),
        ];
        for (dir, source, line, needle) in cases {
            let parsed = parse_in(dir, source);
            let (got_line, message) = error(&parsed);
            assert!(message.contains(needle), "{source:?}: {message}");
            assert_eq!(got_line, *line, "{source:?}: {message}");
            assert!(parsed.text.is_none());
        }
    }

    #[test]
    fn a_symlinked_service_outside_the_skill_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("demo");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(root.path().join("outside.sh"), "").unwrap();
        std::os::unix::fs::symlink(root.path().join("outside.sh"), dir.join("svc.sh")).unwrap();
        let dir = dir.canonicalize().unwrap();
        let parsed = parse(
            &dir,
            "---\nname: demo\ndescription: d\nservice: ./svc.sh\n---\n",
        );
        assert!(error(&parsed).1.contains("outside the skill directory"));
    }

    #[test]
    fn names_follow_the_standard() {
        assert!(check_name("aos-context").is_ok());
        assert!(check_name("a").is_ok());
        for bad in ["", "-a", "a-", "a--b", "A", "a_b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
