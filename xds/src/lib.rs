//! The xDS side of ringside: an ADS client on the control thread (never on a shard) that turns
//! Envoy v3 listener, route, cluster and endpoint resources into ringside's own plain, validated,
//! immutable config snapshots, ACKing what it applied and NACKing, with the field named, what it
//! cannot honour. No `prost` type leaks out of this crate. (Issue 9; not built yet: today
//! ringside takes its config from the static YAML file only.)
#![forbid(unsafe_code)]
