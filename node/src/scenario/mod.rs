//! Scenarios: a timeline of process and network faults, client loads,
//! waits and checks, read from a TOML file ([`spec`]) and run against a lab
//! ([`run`]) from the app or from `distlab-node scenario run`.

pub mod local;
pub mod run;
pub mod spec;

pub use spec::{Action, Condition, Invariant, Pick, Process, Scenario, SpecError, Step, System};
