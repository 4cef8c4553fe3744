//! The `lancet` command line: one module per subcommand, plus shared model arguments and tables.

pub mod bench;
pub mod compile;
pub mod explain;
pub mod graph;
pub mod model;
pub mod progress;
pub mod run;
pub mod table;
