//! The sans-IO mesh core. Nothing in here imports tokio, opens a socket or
//! reads the clock: time is always an argument.

pub mod conn_maker;
pub mod connection;
pub mod crypto;
pub mod data_path;
pub mod forward;
pub mod gossip;
pub mod identity;
pub mod mac_table;
pub mod prefix;
pub mod rate_limit;
pub mod reassembly;
pub mod router;
pub mod routes;
pub mod status;
pub mod topology;
pub mod wire;

pub use conn_maker::ConnHandle;
pub use router::{Action, Router, RouterConfig};
