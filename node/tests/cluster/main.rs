//! Integration tests with real `distlab-node` processes, one binary so it
//! links once (see harness.rs for the set-up).

mod bookstore;
mod deps;
mod faults;
mod harness;
mod interop;
mod iot;
mod lifecycle;
mod lockers;
mod maplog;
mod maplog_front;
mod mom;
mod outage;
mod robustness;
mod scenarios;
