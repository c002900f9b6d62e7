//! `distlab-node`: a headless Distlab node. See `distlab_node::cli`.

fn main() -> std::process::ExitCode {
    distlab_node::cli::main()
}
