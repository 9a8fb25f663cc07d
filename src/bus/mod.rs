//! How data moves between agent and controller: the signed batch format ([`wire`]), the agent's
//! durable spool ([`spool`]), the HTTP sender and command long-poll ([`http`]), and the command
//! bus trait with the agent's command loop ([`commands`]).
//!
//! Only this module knows how a batch is framed and signed. It knows nothing about stores.

pub mod commands;
pub mod http;
pub mod spool;
pub mod wire;
