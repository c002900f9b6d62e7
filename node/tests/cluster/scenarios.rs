//! The shipped scenarios (config/scenarios/*.toml), each run headless as CI
//! would: `distlab-node scenario run FILE --spawn` starts a broker and the
//! scenario's nodes, prints every step, and exits 0 only if every step was
//! done and every check held. And a scenario that must fail does.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::NODE_BIN;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/scenarios")
}

/// The default lab with every HTTP port free (tests run side by side).
fn lab_config(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for line in distlab_node::config::DEFAULT_LAB_TOML.lines() {
        let line = match line.find("\"127.0.0.1:") {
            Some(at) if !line.starts_with("broker") => {
                let end = line[at + 1..]
                    .find('"')
                    .map_or(line.len(), |e| at + 1 + e + 1);
                format!("{}\"127.0.0.1:0\"{}", &line[..at], &line[end..])
            }
            _ => line.to_owned(),
        };
        text.push_str(&line);
        text.push('\n');
    }
    let path = dir.join("lab.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `scenario run FILE --spawn`; (success, stdout, the history's ops).
fn run(file: &Path) -> (bool, String, Vec<distlab_node::history::Op>) {
    let dir = tempfile::tempdir().unwrap();
    let config = lab_config(dir.path());
    let out = Command::new(NODE_BIN)
        .args(["scenario", "run"])
        .arg(file)
        .arg("--spawn")
        .arg("--config")
        .arg(&config)
        .arg("--history")
        .arg(dir.path())
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("runs"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    let ops = match runs.as_slice() {
        [run] => {
            let text = std::fs::read_to_string(run.join("history.jsonl")).unwrap();
            let edn = std::fs::read_to_string(run.join("history.edn")).unwrap();
            assert_eq!(edn.lines().count(), text.lines().count());
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
        other => panic!("one run directory expected: {other:?}\n{stdout}"),
    };
    (out.status.success(), stdout, ops)
}

/// Runs a shipped scenario: it passes, and its history has the faults and
/// every client operation, each invoke completed.
fn passes(name: &str) {
    use distlab_node::history::{Actor, OpType};
    let (ok, stdout, ops) = run(&scenarios_dir().join(name));
    assert!(
        ok && stdout.contains("PASSED"),
        "{name} did not pass:\n{stdout}"
    );
    assert!(!stdout.contains("FAILED"), "{stdout}");
    let nemesis = ops
        .iter()
        .filter(|o| matches!(o.process, Actor::Nemesis(_)))
        .count();
    assert!(nemesis > 0, "no fault in the history");
    let invoked = ops.iter().filter(|o| o.kind == OpType::Invoke).count();
    assert_eq!(
        invoked,
        ops.len() - invoked - nemesis,
        "every invoke has its completion"
    );
}

#[test]
fn every_shipped_scenario_reads_and_has_a_test() {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bookstore-partition-catalog.toml",
            "iot-isolate-holder.toml",
            "mom-isolate-leader.toml",
            "mom-kill-leader.toml",
        ],
        "a new scenario needs its test here"
    );
    for n in &names {
        let file = distlab_node::scenario::Scenario::load(&scenarios_dir().join(n)).unwrap();
        let built_in =
            distlab_node::scenario::find(Path::new(n.trim_end_matches(".toml"))).unwrap();
        assert_eq!(
            file.steps, built_in.steps,
            "{n}: the built-in copy is the file"
        );
    }
}

#[test]
fn mom_kill_leader() {
    passes("mom-kill-leader.toml");
}

#[test]
fn mom_isolate_leader() {
    passes("mom-isolate-leader.toml");
}

#[test]
fn bookstore_partition_catalog() {
    passes("bookstore-partition-catalog.toml");
}

#[test]
fn iot_isolate_holder() {
    passes("iot-isolate-holder.toml");
}

/// No fault happens, so no new leader comes: the wait fails, and with it
/// the run (exit code and verdict), though the check itself holds.
#[test]
fn a_scenario_whose_wait_never_comes_true_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("never.toml");
    std::fs::write(
        &file,
        r#"
name = "waits for a leader change that no fault causes"
nodes = ["mom-a", "mom-b", "mom-c"]
length = "6s"
check = ["mom-no-acked-lost"]

[[step]]
at = "0s"
do = "wait"
for = "leader:mom"

[[step]]
at = "0s"
do = "load"
system = "mom"
rate = 10

[[step]]
at = "1s"
do = "heal"

[[step]]
at = "1s"
do = "wait"
for = "new-leader:mom"
within = "3s"
"#,
    )
    .unwrap();
    let (ok, stdout, _) = run(&file);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("FAILED: wait for a new mom leader"),
        "{stdout}"
    );
    assert!(
        stdout.contains("check mom-no-acked-lost      ok"),
        "{stdout}"
    );
}
