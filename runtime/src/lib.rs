pub use lancet_compiler as compiler;
