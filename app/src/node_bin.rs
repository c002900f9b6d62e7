//! Finding the `distlab-node` binary the app starts its nodes with.
//!
//! It is looked for next to the `distlab` executable. Under `cargo run`
//! (which builds only the app) a missing one is built with the same cargo and
//! profile, which only links: the node library is already compiled.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};

pub const NODE_BIN: &str = "distlab-node";

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
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, String> {
    let candidates = candidates(explicit);
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        format!(
            "`{NODE_BIN}` was not found (looked at {}). Build it with `cargo build --release -p distlab-node`, or pass --node-bin PATH.",
            looked.join(", ")
        )
    })
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
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(group),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Builds `distlab-node` with the cargo and profile this app was run with.
/// Blocking: call it off the UI thread.
pub fn build() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").ok_or("not started by cargo")?;
    let manifest_dir =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").ok_or("not started by cargo")?);
    let workspace = manifest_dir.parent().unwrap_or(&manifest_dir).to_owned();
    let mut cmd = Command::new(cargo);
    // Selecting the app too keeps feature unification identical to the build
    // that produced this app, so nothing but the node binary is (re)built.
    cmd.current_dir(&workspace)
        .args(["build", "-p", "distlab", "-p", "distlab-node", "--bins"]);
    let profile = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.file_name()?.to_str().map(str::to_owned))
        .unwrap_or_else(|| "debug".to_owned());
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    // Its own process group, so closing the app can stop cargo and its rustc
    // children together (see `cancel_build`).
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tracing::info!(?cmd, "building distlab-node");
    let child = cmd.spawn().map_err(|e| format!("cannot run cargo: {e}"))?;
    BUILD_GROUP.store(child.id() as i32, Ordering::Release);
    let output = child.wait_with_output();
    BUILD_GROUP.store(0, Ordering::Release);
    let output = output.map_err(|e| format!("cargo failed: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
        return Err(format!(
            "building distlab-node failed:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    locate(None)
}
