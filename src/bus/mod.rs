//! How data moves between agent and controller: the signed batch format ([`wire`]), the agent's
//! durable spool ([`spool`]) and the HTTP sender ([`http`]).
//!
//! Only this module knows how a batch is framed and signed. It knows nothing about stores.

pub mod http;
pub mod spool;
pub mod wire;
