//! Hot upgrade: handing listening sockets (and later live connections) from a running ringside
//! to its successor over a Unix socket with SCM_RIGHTS, plus versioned opaque state blobs and
//! drain signals. Knows nothing of routing, parsing or config. (Issue 8; not built yet: today a
//! ringside drains on SIGTERM and exits.)
