//! The node library must never depend on a GUI crate: headless machines run it.

use std::process::Command;

#[test]
fn node_crate_has_no_gui_dependencies() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "distlab-node",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tree.contains("rumqttc"),
        "unexpected cargo tree output:\n{tree}"
    );
    let gui: Vec<&str> = tree
        .lines()
        .filter(|l| {
            let name = l.split_whitespace().next().unwrap_or("");
            [
                "eframe",
                "egui",
                "egui_plot",
                "egui-winit",
                "winit",
                "wgpu",
                "glow",
                "glutin",
            ]
            .contains(&name)
        })
        .collect();
    assert!(
        gui.is_empty(),
        "distlab-node depends on GUI crates: {gui:?}"
    );
}
