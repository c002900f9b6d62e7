//! Scenarios: a timeline of process and network faults, client loads,
//! waits and checks, read from a TOML file ([`spec`]) and run against a lab
//! ([`run`]) from the app or from `distlab-node scenario run`.

pub mod local;
pub mod run;
pub mod spec;

pub use spec::{Action, Condition, Invariant, Pick, Process, Scenario, SpecError, Step, System};

/// The scenarios shipped in `config/scenarios`, built in (file name, text):
/// an installed app or binary has them without the files.
pub const SHIPPED: [(&str, &str); 4] = [
    (
        "mom-kill-leader.toml",
        include_str!("../../../config/scenarios/mom-kill-leader.toml"),
    ),
    (
        "mom-isolate-leader.toml",
        include_str!("../../../config/scenarios/mom-isolate-leader.toml"),
    ),
    (
        "bookstore-partition-catalog.toml",
        include_str!("../../../config/scenarios/bookstore-partition-catalog.toml"),
    ),
    (
        "iot-isolate-holder.toml",
        include_str!("../../../config/scenarios/iot-isolate-holder.toml"),
    ),
];

/// A scenario by file path, or by the name of a shipped one (with or
/// without `.toml`).
pub fn find(name_or_path: &std::path::Path) -> Result<Scenario, SpecError> {
    if name_or_path.exists() {
        return Scenario::load(name_or_path);
    }
    let name = name_or_path.to_string_lossy();
    let file = if name.ends_with(".toml") {
        name.to_string()
    } else {
        format!("{name}.toml")
    };
    match SHIPPED.iter().find(|(f, _)| **f == file) {
        Some((f, text)) => Scenario::parse(&format!("(built in) {f}"), text),
        None => Scenario::load(name_or_path),
    }
}

/// Every shipped scenario, and those in `dir` (a file there replaces the
/// shipped one of its name): (file name, the scenario or why not).
pub fn catalog(dir: Option<&std::path::Path>) -> Vec<(String, Result<Scenario, String>)> {
    let mut out: std::collections::BTreeMap<String, Result<Scenario, String>> = SHIPPED
        .iter()
        .map(|(f, text)| {
            (
                (*f).to_owned(),
                Scenario::parse(&format!("(built in) {f}"), text).map_err(|e| e.to_string()),
            )
        })
        .collect();
    if let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) {
        for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.extension().is_some_and(|x| x == "toml")
                && let Some(name) = path.file_name()
            {
                out.insert(
                    name.to_string_lossy().into_owned(),
                    Scenario::load(&path).map_err(|e| e.to_string()),
                );
            }
        }
    }
    out.into_iter().collect()
}
