//! Chromium runs driven by the Node scripts in tests/browser (Playwright): what they need, and
//! the JSON summary each prints as its last line on stdout.

use std::time::Instant;

use serde_json::Value;

use super::{prerequisites, MQTT_JS, PLAYWRIGHT};

/// [`prerequisites`] of a page test: Chromium, Node, Playwright and the MQTT.js bundle.
pub fn page_prerequisites(test: &str) -> bool {
    prerequisites(test, &["node"], &[PLAYWRIGHT, MQTT_JS])
}

/// The summary `script` printed (the last stdout line that starts with `{`), logged pretty with
/// the script's stderr; returns it and its pretty form. Panics, showing both outputs, without one.
pub fn script_summary(
    script: &str,
    (code, out, err): &(Option<i32>, String, String),
    started: Instant,
) -> (Value, String) {
    eprintln!("{err}");
    let line = out.lines().rev().find(|l| l.starts_with('{'));
    let Some(Ok(summary)) = line.map(serde_json::from_str::<Value>) else {
        let took = started.elapsed();
        panic!("{script} printed no JSON summary (exit {code:?}, {took:?})\nstdout:\n{out}\nstderr:\n{err}");
    };
    let pretty = serde_json::to_string_pretty(&summary).expect("pretty summary");
    eprintln!("{script} summary:\n{pretty}");
    (summary, pretty)
}
