//! Integration tests: one binary, a module per area, against real PostgreSQL, Redis and
//! `fleet` processes. See harness.rs for how each test isolates itself.

mod agent_lifecycle;
mod api;
mod architecture;
mod bench;
mod browser;
mod cli;
mod commands;
mod dashboard_words;
mod deploy;
mod e2e;
mod files;
mod harness;
mod heartbeat_owners;
mod heartbeat_signals;
mod heartbeats;
mod history;
mod hot;
mod ingest;
mod local_agent;
mod massaffect;
mod nats;
mod node_auth;
mod quotas;
mod record_bounds;
mod refusals;
mod registry;
mod slow_clients;
mod sources;
mod steward_inbox;
mod store_errors;
mod tls;
mod tokens;
mod ui;
mod ui_pages;
mod watchtower;
