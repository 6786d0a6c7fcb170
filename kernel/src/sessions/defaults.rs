//! Resolving default skills across the three layers (system → agent → session).
//!
//! For each skill name, the last layer that says something about `load` (or `start`)
//! wins. Skills the system layer marks `pinned` load first, in declaration order, and
//! lower layers cannot disable them; the rest keep the order of their first mention.

use aos_sdk::protocol::{SkillDefaultRule, Toggle};

/// The resolved defaults of one owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Skills whose text a new session loads, in order.
    pub load: Vec<String>,
    /// Skills whose service runs for this owner.
    pub start: Vec<String>,
}

/// Resolves `layers`, given system first. Only the first layer's `pinned` counts.
pub fn resolve(layers: &[&[SkillDefaultRule]]) -> Resolved {
    let pinned: Vec<String> = layers
        .first()
        .map(|system| {
            system
                .iter()
                .filter(|r| r.pinned && r.load == Some(Toggle::Enable))
                .map(|r| r.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let merge = |pick: fn(&SkillDefaultRule) -> Option<Toggle>| -> Vec<String> {
        let mut order: Vec<(String, Toggle)> = Vec::new();
        for rule in layers.iter().flat_map(|layer| layer.iter()) {
            let Some(toggle) = pick(rule) else { continue };
            match order.iter_mut().find(|(name, _)| *name == rule.name) {
                Some(entry) => entry.1 = toggle,
                None => order.push((rule.name.clone(), toggle)),
            }
        }
        order
            .into_iter()
            .filter(|(_, toggle)| *toggle == Toggle::Enable)
            .map(|(name, _)| name)
            .collect()
    };
    let mut load = pinned.clone();
    load.extend(
        merge(|r| r.load)
            .into_iter()
            .filter(|n| !pinned.contains(n)),
    );
    Resolved {
        load,
        start: merge(|r| r.start),
    }
}

/// The skills whose service runs *owned by* the layer at `level` (0 system, 1 agent,
/// 2 session): those whose last `start` rule over `layers` is `enable` and comes from
/// that very layer. So a system rule starts one system-owned service; an agent that
/// repeats `start: enable` gets its own agent-owned service as well; a lower layer's
/// `disable` keeps that layer from owning one but does not stop a higher layer's.
pub fn started_at(layers: &[&[SkillDefaultRule]], level: usize) -> Vec<String> {
    let mut last: Vec<(String, Toggle, usize)> = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        for rule in layer.iter() {
            let Some(toggle) = rule.start else { continue };
            match last.iter_mut().find(|(name, _, _)| *name == rule.name) {
                Some(entry) => {
                    entry.1 = toggle;
                    entry.2 = index;
                }
                None => last.push((rule.name.clone(), toggle, index)),
            }
        }
    }
    last.into_iter()
        .filter(|(_, toggle, index)| *toggle == Toggle::Enable && *index == level)
        .map(|(name, _, _)| name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, load: Option<Toggle>, start: Option<Toggle>) -> SkillDefaultRule {
        SkillDefaultRule {
            name: name.into(),
            load,
            start,
            pinned: false,
        }
    }

    #[test]
    fn later_layers_override_and_pinned_skills_come_first() {
        use Toggle::{Disable, Enable};
        let mut aos = rule("aos", Some(Enable), None);
        aos.pinned = true;
        let system = vec![rule("memory", Some(Enable), None), aos];
        let agent = vec![
            rule("memory", Some(Disable), None),
            rule("aos", Some(Disable), None),
        ];
        let session = vec![rule("shell", Some(Enable), None)];
        let resolved = resolve(&[&system, &agent, &session]);
        assert_eq!(resolved.load, vec!["aos", "shell"]);
    }

    #[test]
    fn each_layer_owns_the_services_it_decides() {
        use Toggle::{Disable, Enable};
        let system = vec![
            rule("ctx", None, Some(Enable)),
            rule("ui", None, Some(Enable)),
            rule("mem", None, Some(Enable)),
        ];
        let agent = vec![
            rule("ui", None, Some(Disable)),
            rule("mem", None, Some(Enable)),
            rule("own", None, Some(Enable)),
        ];
        let session = vec![
            rule("own", None, Some(Disable)),
            rule("tmp", None, Some(Enable)),
        ];
        let layers: [&[SkillDefaultRule]; 3] = [&system, &agent, &session];
        assert_eq!(started_at(&layers[..1], 0), vec!["ctx", "ui", "mem"]);
        assert_eq!(started_at(&layers[..2], 1), vec!["mem", "own"]);
        assert_eq!(started_at(&layers, 2), vec!["tmp"]);
    }

    #[test]
    fn load_and_start_are_independent() {
        use Toggle::{Disable, Enable};
        let system = vec![
            rule("ctx", None, Some(Enable)),
            rule("ui", Some(Enable), Some(Enable)),
        ];
        let agent = vec![rule("ui", None, Some(Disable))];
        let resolved = resolve(&[&system, &agent, &[]]);
        assert_eq!(resolved.load, vec!["ui"]);
        assert_eq!(resolved.start, vec!["ctx"]);
    }
}
