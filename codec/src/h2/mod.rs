//! HTTP/2 (RFC 9113) for a header-routing proxy: frame headers and the small frames a relay
//! writes itself ([`frame`]), HPACK ([`hpack`]), and gRPC/Triple details read from headers
//! ([`grpc`]). Bodies are never parsed here: DATA payloads pass through as bytes.
pub mod frame;
pub mod grpc;
pub mod hpack;

#[cfg(test)]
mod tests;
