//! Finding the `distlab-node` binary the app starts its nodes with.
//!
//! It is looked for next to the `distlab` executable. Under `cargo run`
//! (which builds only the app) a missing one is built with the same cargo,
//! target directory and profile, which only links: the node library is
//! already compiled. The app's tests build it the same way ([`for_tests`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

pub const NODE_BIN: &str = "distlab-node";

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
    #[error("cannot run cargo: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cargo failed: {0}")]
    Wait(#[source] std::io::Error),
    /// cargo ran and failed; the last lines of what it said.
    #[error("building distlab-node failed:\n{tail}")]
    BuildFailed { tail: String },
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

/// Process group of a running `build`, 0 when none.
static BUILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// Stops a running `build` (cargo and the compilers it started); for when the
/// app closes before the build is done.
pub fn cancel_build() {
    let group = BUILD_GROUP.swap(0, Ordering::AcqRel);
    if group > 0 {
        tracing::info!("closing: stopping the distlab-node build");
        if let Err(err) = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGTERM,
        ) {
            // ESRCH: it ended on its own meanwhile, which is as good.
            tracing::debug!(error = %err, "the distlab-node build was already gone");
        }
    }
}

/// Where an executable's build put things: `target/<profile>/exe`, or
/// `target/<profile>/deps/exe` for a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildDir {
    pub target_dir: PathBuf,
    /// The profile's directory name: `debug` (the dev profile), `release`, or
    /// a custom profile's name.
    pub profile: String,
}

impl BuildDir {
    pub fn of_exe(exe: &Path) -> Option<BuildDir> {
        let mut dir = exe.parent()?;
        if dir.file_name()? == "deps" {
            dir = dir.parent()?;
        }
        Some(BuildDir {
            target_dir: dir.parent()?.to_owned(),
            profile: dir.file_name()?.to_str()?.to_owned(),
        })
    }

    /// The cargo arguments that build into this directory.
    pub fn cargo_args(&self) -> Vec<String> {
        let mut args = vec![
            "--target-dir".to_owned(),
            self.target_dir.display().to_string(),
        ];
        match self.profile.as_str() {
            "debug" => {}
            "release" => args.push("--release".to_owned()),
            other => args.extend(["--profile".to_owned(), other.to_owned()]),
        }
        args
    }

    /// Where the node binary lands.
    pub fn node_bin(&self) -> PathBuf {
        self.target_dir.join(&self.profile).join(NODE_BIN)
    }
}

/// Builds `distlab-node` with the cargo, target directory and profile this
/// app was run with. Blocking: call it off the UI thread.
pub fn build() -> Result<PathBuf, NodeBinError> {
    let cargo = std::env::var_os("CARGO").ok_or(NodeBinError::NotUnderCargo)?;
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or(NodeBinError::NotUnderCargo)?);
    let workspace = manifest_dir.parent().unwrap_or(&manifest_dir).to_owned();
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| BuildDir::of_exe(&exe));
    let mut cmd = Command::new(cargo);
    // Selecting the app too keeps feature unification identical to the build
    // that produced this app, so nothing but the node binary is (re)built.
    cmd.current_dir(&workspace)
        .args(["build", "-p", "distlab", "-p", "distlab-node", "--bins"]);
    if let Some(dir) = &dir {
        cmd.args(dir.cargo_args());
    }
    run_cargo(cmd)?;
    match dir.map(|d| d.node_bin()) {
        Some(built) if built.is_file() => Ok(built),
        _ => locate(None),
    }
}

/// For tests: builds the node binary of this workspace into the target
/// directory and profile of the running test (a no-op when it is fresh), so
/// `cargo test -p distlab` needs nothing built first. `DISTLAB_NODE_BIN`
/// names a binary to use instead.
#[cfg(test)]
pub fn for_tests() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("DISTLAB_NODE_BIN") {
                return PathBuf::from(p);
            }
            let exe = std::env::current_exe().expect("the test's own path");
            let dir = BuildDir::of_exe(&exe).expect("a test runs from target/<profile>/deps");
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the app is in the workspace");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.current_dir(workspace)
                .args(["build", "-p", "distlab-node", "--bin", NODE_BIN])
                .args(dir.cargo_args());
            if let Err(err) = run_cargo(cmd) {
                panic!("the tests need {NODE_BIN}: {err}");
            }
            let bin = dir.node_bin();
            assert!(bin.is_file(), "cargo built no {}", bin.display());
            bin
        })
        .clone()
}

/// Runs a cargo command in its own process group (so closing the app can
/// stop cargo and its rustc children together, see [`cancel_build`]).
fn run_cargo(mut cmd: Command) -> Result<(), NodeBinError> {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::info!(?cmd, "building distlab-node");
    let child = cmd.spawn().map_err(NodeBinError::Spawn)?;
    BUILD_GROUP.store(child.id() as i32, Ordering::Release);
    let output = child.wait_with_output();
    BUILD_GROUP.store(0, Ordering::Release);
    let output = output.map_err(NodeBinError::Wait)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(NodeBinError::BuildFailed {
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
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
        let e = run_cargo(cmd).unwrap_err();
        let NodeBinError::BuildFailed { tail } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(tail.lines().count(), 8);
        assert!(
            tail.starts_with("line 3\n") && tail.ends_with("line 10"),
            "{tail}"
        );
        let e = run_cargo(Command::new("/nonexistent/cargo")).unwrap_err();
        assert!(e.to_string().starts_with("cannot run cargo: "), "{e}");
    }

    #[test]
    fn the_tests_get_a_node_binary() {
        let bin = for_tests();
        assert!(bin.is_file(), "{}", bin.display());
        assert!(locate(Some(&bin)).is_ok());
    }
}
