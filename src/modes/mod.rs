//! One module per mode of the binary. Modes only wire: they build the parts from config, start
//! them, and stop them on shutdown. Behaviour belongs in the modules they wire.

pub mod agent;
pub mod bench;
pub mod bench_commands;
pub mod bench_dashboard;
pub mod bench_heartbeats;
pub mod bench_logs;
pub mod controller;
pub mod node;
pub mod operator;
pub mod pulse;
pub mod send;
pub mod token;
