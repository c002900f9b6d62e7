//! Building `distlab-node` with cargo: into the target directory and profile
//! of a given executable, in a process group of its own that closing the app
//! can stop. The app's integration test includes this file as it is, so it
//! names nothing else of the app.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

pub const NODE_BIN: &str = "distlab-node";

/// Why cargo did not build the node binary.
#[derive(Debug, thiserror::Error)]
pub enum CargoError {
    #[error("cannot run cargo: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cargo failed: {0}")]
    Wait(#[source] std::io::Error),
    /// cargo ran and failed; the last lines of what it said.
    #[error("building distlab-node failed:\n{tail}")]
    Failed { tail: String },
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

/// Process group of a running build, 0 when none.
static BUILD_GROUP: AtomicI32 = AtomicI32::new(0);

/// Stops a running build (cargo and the compilers it started); for when the
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

/// Runs a cargo command in its own process group (see [`cancel_build`]);
/// blocking.
pub fn run(mut cmd: Command) -> Result<(), CargoError> {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::info!(?cmd, "building distlab-node");
    let child = cmd.spawn().map_err(CargoError::Spawn)?;
    BUILD_GROUP.store(child.id() as i32, Ordering::Release);
    let output = child.wait_with_output();
    BUILD_GROUP.store(0, Ordering::Release);
    let output = output.map_err(CargoError::Wait)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(CargoError::Failed {
            tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
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
            if let Err(err) = run(cmd) {
                panic!("the tests need {NODE_BIN}: {err}");
            }
            let bin = dir.node_bin();
            assert!(bin.is_file(), "cargo built no {}", bin.display());
            bin
        })
        .clone()
}
