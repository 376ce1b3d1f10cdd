//! Wire formats of ringside: the Dubbo2 header and the lazily scanned Hessian2 request fields,
//! and the Triple/HTTP/2 framing helpers. Bytes in, views out: no sockets, no runtime, no clocks,
//! no config. Nothing in this crate panics on any input; every decoder returns a typed error or
//! says how many more bytes it needs.
#![forbid(unsafe_code)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

#[macro_use]
mod macros;

mod error;

pub mod dubbo;
pub mod h2;
pub mod hessian2;

pub use error::DecodeError;
