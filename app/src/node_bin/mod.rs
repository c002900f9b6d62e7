//! Finding the `distlab-node` binary the app starts its nodes with.
//!
//! It is looked for next to the `distlab` executable. Under `cargo run`
//! (which builds only the app) a missing one is built with the same cargo,
//! target directory and profile, which only links: the node library is
//! already compiled ([`cargo`]). The app's tests build it the same way
//! (`cargo::for_tests`).

pub mod cargo;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use cargo::{BuildDir, CargoError, NODE_BIN, cancel_build};

/// Why there is no node binary to start.
#[derive(Debug, thiserror::Error)]
pub enum NodeBinError {
    #[error(
        "`{NODE_BIN}` was not found (looked at {}). Build it with `cargo build --release -p distlab-node`, or pass --node-bin PATH.",
        list(.looked)
    )]
    NotFound { looked: Vec<PathBuf> },
    #[error("not started by cargo")]
    NotUnderCargo,
    #[error(transparent)]
    Build(#[from] CargoError),
    #[error("the build thread died")]
    BuildThreadDied,
}

fn list(paths: &[PathBuf]) -> String {
    let looked: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    looked.join(", ")
}

/// Where the node binary may be, in order.
pub fn candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = explicit {
        out.push(p.to_owned());
        return out;
    }
    if let Some(p) = std::env::var_os("DISTLAB_NODE_BIN") {
        out.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        out.push(dir.join(NODE_BIN));
        // Test executables live one level down, in target/<profile>/deps.
        if let Some(up) = dir.parent() {
            out.push(up.join(NODE_BIN));
        }
    }
    out
}

/// The first candidate that exists.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, NodeBinError> {
    let looked = candidates(explicit);
    match looked.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(NodeBinError::NotFound { looked }),
    }
}

/// Whether we run under `cargo run` and can build the node binary ourselves.
pub fn can_build() -> bool {
    std::env::var_os("CARGO").is_some() && std::env::var_os("CARGO_MANIFEST_DIR").is_some()
}

/// Builds `distlab-node` with the cargo, target directory and profile this
/// app was run with. Blocking: call it off the UI thread.
pub fn build() -> Result<PathBuf, NodeBinError> {
    let program = std::env::var_os("CARGO").ok_or(NodeBinError::NotUnderCargo)?;
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or(NodeBinError::NotUnderCargo)?);
    let workspace = manifest_dir.parent().unwrap_or(&manifest_dir).to_owned();
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| BuildDir::of_exe(&exe));
    let mut cmd = Command::new(program);
    // Selecting the app too keeps feature unification identical to the build
    // that produced this app, so nothing but the node binary is (re)built.
    cmd.current_dir(&workspace)
        .args(["build", "-p", "distlab", "-p", "distlab-node", "--bins"]);
    if let Some(dir) = &dir {
        cmd.args(dir.cargo_args());
    }
    cargo::run(cmd)?;
    match dir.map(|d| d.node_bin()) {
        Some(built) if built.is_file() => Ok(built),
        _ => locate(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_dirs_come_from_the_executables_path() {
        let app = BuildDir::of_exe(Path::new("/w/target/debug/distlab")).unwrap();
        assert_eq!(
            app,
            BuildDir {
                target_dir: "/w/target".into(),
                profile: "debug".into()
            }
        );
        assert_eq!(app.cargo_args(), ["--target-dir", "/w/target"]);
        assert_eq!(app.node_bin(), Path::new("/w/target/debug/distlab-node"));
        // A test executable, one level down.
        let test = BuildDir::of_exe(Path::new("/w/target/release/deps/window-0123")).unwrap();
        assert_eq!(test.profile, "release");
        assert_eq!(
            test.cargo_args(),
            ["--target-dir", "/w/target", "--release"]
        );
        assert_eq!(test.node_bin(), Path::new("/w/target/release/distlab-node"));
        let custom = BuildDir::of_exe(Path::new("/t/fast/distlab")).unwrap();
        assert_eq!(
            custom.cargo_args(),
            ["--target-dir", "/t", "--profile", "fast"]
        );
        assert_eq!(BuildDir::of_exe(Path::new("distlab")), None);
    }

    #[test]
    fn a_missing_binary_says_where_it_looked_and_what_to_do() {
        let e = locate(Some(Path::new("/nonexistent/distlab-node"))).unwrap_err();
        assert!(matches!(&e, NodeBinError::NotFound { looked } if looked.len() == 1));
        let text = e.to_string();
        assert!(
            text.contains("looked at /nonexistent/distlab-node"),
            "{text}"
        );
        assert!(text.contains("--node-bin PATH"), "{text}");
    }

    #[test]
    fn a_failed_build_shows_the_end_of_what_cargo_said() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i >&2; done; exit 3",
        ]);
        let e = cargo::run(cmd).unwrap_err();
        let CargoError::Failed { tail } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(tail.lines().count(), 8);
        assert!(
            tail.starts_with("line 3\n") && tail.ends_with("line 10"),
            "{tail}"
        );
        let e = cargo::run(Command::new("/nonexistent/cargo")).unwrap_err();
        assert!(e.to_string().starts_with("cannot run cargo: "), "{e}");
    }

    #[test]
    fn the_tests_get_a_node_binary() {
        let bin = cargo::for_tests();
        assert!(bin.is_file(), "{}", bin.display());
        assert!(locate(Some(&bin)).is_ok());
    }
}
