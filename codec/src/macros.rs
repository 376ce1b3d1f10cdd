//! `enum_with_unknown!`: a wire enum that keeps every value it does not know as `Unknown(raw)`,
//! so a new serialization id or status passes through (and can be counted) instead of failing.
//! The idea is smoltcp's (`src/macros.rs`); this is our own small version.

macro_rules! enum_with_unknown {
    (
        $(#[$enum_attr:meta])*
        pub enum $name:ident($ty:ty) {
            $( $(#[$variant_attr:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $(#[$enum_attr])*
        pub enum $name {
            $( $(#[$variant_attr])* $variant ),*,
            /// A value this codec does not know; kept as seen.
            Unknown($ty),
        }

        impl ::core::convert::From<$ty> for $name {
            fn from(value: $ty) -> Self {
                match value {
                    $( $value => $name::$variant ),*,
                    other => $name::Unknown(other),
                }
            }
        }

        impl ::core::convert::From<$name> for $ty {
            fn from(value: $name) -> Self {
                match value {
                    $( $name::$variant => $value ),*,
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}
