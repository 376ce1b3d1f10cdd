//! Tests that need a NIC, DPDK (on its virtual devices) or root-only network set-ups. Not part of
//! the default build; the project's test command installs what they need. (Issue 13; no tests
//! here yet.)
