//! Control: everything that runs off the shards. The process lifecycle and the config updates
//! (`server`: `Server`, `Shared::apply`, the listening sockets), the hot-upgrade hand-off
//! (`handoff`), the admin API (`admin`, and its Envoy-shaped `config_dump`), and the glue that turns xDS and registry events into
//! config updates (`xds_glue`, `registry_glue`). Never touches a byte of traffic; the data path
//! never imports it.
pub mod admin;
pub mod config_dump;
pub mod handoff;
pub mod registry_glue;
pub mod sds_glue;
pub mod server;
pub mod xds_glue;
