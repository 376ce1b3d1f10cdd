//! The Dubbo2 filter: decode each frame's header and routing fields, route, forward over
//! multiplexed upstream connections, and map every answer back to its caller.
//!
//! - `wire`: the only place that calls the codec (frame split, fields, replies);
//! - `error`: why ringside answers a request itself, and the status of each reason;
//! - `router`: compiled routes, matched without allocating;
//! - `downstream`: one consumer connection (reader, writer, local replies);
//! - `upstream`: per-shard pools of multiplexed provider connections.
pub mod downstream;
pub mod error;
pub mod router;
pub mod upstream;
pub mod wire;
