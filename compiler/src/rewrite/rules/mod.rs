//! The rule families, one per file.

pub mod epilogue;
pub mod kernel;
pub mod view;

use super::rule::Rule;

/// Every rule, in the order the runner applies them.
pub fn all() -> impl Iterator<Item = &'static Rule> {
    view::RULES.iter().chain(kernel::RULES).chain(epilogue::RULES)
}
