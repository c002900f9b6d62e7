//! `distlab-node`: a headless Distlab node, its command line and its
//! benchmarks. See [`cli`].

mod bench;
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
