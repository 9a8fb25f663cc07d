//! `fleet bench …`: the benchmarks, one file each: [`ingest`] (signed batches against a
//! controller), [`commands`] (round trips over HTTP or NATS), [`heartbeats`] (pulses and how
//! late a missed one is noticed), [`dashboard`] (page times over seeded history), [`logs`] (the
//! log tail's throughput). Wiring and measuring only: each drives the real parts, on loopback,
//! bounded in count and time.

pub mod commands;
pub mod dashboard;
pub mod heartbeats;
pub mod ingest;
pub mod logs;
