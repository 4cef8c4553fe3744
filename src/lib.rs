pub use lancet_compiler as compiler;
pub use lancet_runtime as runtime;
