//! The Dubbo2 filter: decode each frame's header and routing fields, route, forward over
//! multiplexed upstream connections, and map every answer back to its caller.
pub mod router;
