//! What the NVIDIA libraries lancet loads at run time (cuDNN, cuBLASLt) have in common: how a
//! failed call's status reads, and how their entry points are resolved by name.

use std::fmt;

/// A non-success status of a library call: its code and the library's own name for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub code: i32,
    pub name: String,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.code)
    }
}

/// Builds an `Api` struct by resolving each `field = "symbol"` from `$lib`, or returns
/// `$error::MissingSymbol { version, symbol }` from the enclosing function.
macro_rules! resolve_api {
    ($error:ident, $lib:expr, $version:expr, { $($field:ident = $symbol:literal),* $(,)? }) => {
        Api { $(
            // SAFETY: the field's type is the C prototype of the symbol, with enums as integers.
            $field: match unsafe { $lib.get(concat!($symbol, "\0").as_bytes()) } {
                Ok(symbol) => *symbol,
                Err(_) => {
                    return Err($error::MissingSymbol { version: $version, symbol: $symbol })
                }
            },
        )* }
    };
}

pub(crate) use resolve_api;
