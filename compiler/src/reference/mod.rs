//! The reference interpreter: evaluates any graph on the CPU in f32.
//!
//! It is the oracle for the whole compiler: rewrites must leave its results unchanged, and the
//! GPU runtime is checked against it. It favours obviously-correct loops over speed, with
//! rayon over independent rows so that small models still evaluate in milliseconds.

mod array;
mod eval;
pub mod kernels;
pub mod numerics;

pub use array::{gather, rel_l2, Array};
pub use eval::{evaluate, Bindings, EvalError};
