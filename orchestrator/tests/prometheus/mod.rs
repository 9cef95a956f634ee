//! Prometheus's own tools for the metrics tests: `promtool check metrics` on a scrape, and a
//! real Prometheus server. tests/install-deps.sh unpacks them from Debian's package into
//! /opt/tug-test/prometheus (installing the package would start a service on the machine);
//! one on PATH is used first.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const UNPACKED: &str = "/opt/tug-test/prometheus/usr/bin";

/// `promtool` or `prometheus`, if this machine has it.
pub fn tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name));
    on_path
        .chain(std::iter::once(PathBuf::from(UNPACKED).join(name)))
        .find(|p| p.is_file())
}

/// `promtool check metrics` on `text`: `Ok(false)` when there is no promtool (the caller
/// says SKIP), an error with promtool's words when it finds a problem.
pub fn check_metrics(text: &str) -> Result<bool, String> {
    let Some(promtool) = tool("promtool") else {
        return Ok(false);
    };
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", promtool.display()))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !openmetrics_counter_help(text, l))
        .collect();
    if out.status.success() || problems.is_empty() {
        Ok(true)
    } else {
        Err(format!("promtool: {}", problems.join("\n")))
    }
}

/// promtool (2.x) lints the classic text format, where a counter's HELP names the sample
/// (`x_total`); OpenMetrics names the family (`# HELP x`), so promtool says `x_total no help
/// text` of a counter that has its help. Only that finding, for a family whose help is
/// there, is let through.
fn openmetrics_counter_help(text: &str, finding: &str) -> bool {
    finding
        .strip_suffix(" no help text")
        .and_then(|sample| sample.strip_suffix("_total"))
        .is_some_and(|family| {
            text.contains(&format!("# HELP {family} "))
                && text.contains(&format!("# TYPE {family} counter"))
        })
}
