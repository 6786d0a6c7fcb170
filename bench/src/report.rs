//! Collecting samples into min/median/max and writing the report files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

use crate::Plan;

/// One figure measured over several rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: String,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// What it means, and what it is compared against.
    pub note: String,
}

impl Figure {
    pub fn from_samples(name: &str, unit: &str, samples: &[f64], note: &str) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.is_empty() {
            f64::NAN
        } else {
            sorted[sorted.len() / 2]
        };
        Self {
            name: name.to_owned(),
            unit: unit.to_owned(),
            min: sorted.first().copied().unwrap_or(f64::NAN),
            median,
            max: sorted.last().copied().unwrap_or(f64::NAN),
            note: note.to_owned(),
        }
    }
}

/// Figures of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    pub scenario: String,
    pub setup: String,
    pub figures: Vec<Figure>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub date: String,
    pub quick: bool,
    pub rounds: usize,
    pub window_seconds: f64,
    pub machine: String,
    pub sections: Vec<Section>,
}

/// A percentile of latencies in microseconds.
pub fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[index] as f64
}

impl Report {
    pub fn new(quick: bool, plan: &Plan, sections: Vec<Section>) -> Self {
        let date = time::OffsetDateTime::now_utc().date().to_string();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        Self {
            date,
            quick,
            rounds: plan.rounds,
            window_seconds: plan.window.as_secs_f64(),
            machine: format!("{cpus} CPUs ({model})"),
            sections,
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# AOS benchmark results, {}\n", self.date);
        let _ = writeln!(
            out,
            "Machine: {}. {} round(s) of {:.1} s per figure; min / median / max over rounds.{}\n",
            self.machine,
            self.rounds,
            self.window_seconds,
            if self.quick {
                " **Quick mode: these timings only show the harness works.**"
            } else {
                ""
            }
        );
        for section in &self.sections {
            let _ = writeln!(out, "## {}\n\n{}\n", section.scenario, section.setup);
            out.push_str(
                "| figure | unit | min | median | max | note |\n|---|---|---|---|---|---|\n",
            );
            for f in &section.figures {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    f.name,
                    f.unit,
                    fmt(f.min),
                    fmt(f.median),
                    fmt(f.max),
                    f.note
                );
            }
            out.push('\n');
        }
        out
    }

    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(dir)?;
        let suffix = if self.quick { "-quick" } else { "" };
        let md = dir.join(format!("{}{suffix}.md", self.date));
        let json = dir.join(format!("{}{suffix}.json", self.date));
        std::fs::write(&md, self.markdown())?;
        std::fs::write(&json, serde_json::to_string_pretty(self)?)?;
        Ok((md, json))
    }
}

fn fmt(value: f64) -> String {
    if value.is_nan() {
        "-".into()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}
