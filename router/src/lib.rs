//! weft: a userspace mesh router for container networks.
//!
//! [`core`] is the sans-IO protocol logic (peers, handshake, topology,
//! gossip, routes); it never touches a socket or a clock. [`shell`] is the
//! thin tokio layer that runs it for real, and [`cli`] the `weft` command.

pub mod cli;
pub mod core;
pub mod format;
pub mod shell;
