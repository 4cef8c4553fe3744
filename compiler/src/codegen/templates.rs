//! The `tera` templates, embedded in the binary so a lancet executable generates kernels on its
//! own. One template per kernel kind; `common.cu.tera` holds the helpers the others include, and
//! `numerics.cuh` (plain CUDA, also the prelude of the runtime's weight program) the storage
//! types and conversions.

use std::sync::OnceLock;

use tera::{Context, Tera};

const SOURCES: &[(&str, &str)] = &[
    ("numerics.cuh", include_str!("../../../templates/numerics.cuh")),
    (
        "common.cu.tera",
        include_str!("../../../templates/common.cu.tera"),
    ),
    (
        "elementwise.cu.tera",
        include_str!("../../../templates/elementwise.cu.tera"),
    ),
    ("row.cu.tera", include_str!("../../../templates/row.cu.tera")),
    (
        "gated_gemm.cu.tera",
        include_str!("../../../templates/gated_gemm.cu.tera"),
    ),
];

fn tera() -> &'static Tera {
    static TERA: OnceLock<Tera> = OnceLock::new();
    TERA.get_or_init(|| {
        let mut tera = Tera::default();
        tera.autoescape_on(Vec::new());
        tera.add_raw_templates(SOURCES.iter().copied())
            .expect("embedded templates parse");
        tera
    })
}

/// Renders template `name` (one of [`SOURCES`]).
pub fn render(name: &str, context: &Context) -> String {
    tera()
        .render(name, context)
        .unwrap_or_else(|e| panic!("template {name} failed to render: {e:?}"))
}
