//! CUDA text for programs: index arithmetic, loads and stores through strided views, one
//! expression per instruction, and the template contexts.
//!
//! Every instruction's result is rounded to its dtype exactly where the unfused graph would have
//! stored it, so a fused kernel computes the same values as the ops it replaced (and as the
//! reference interpreter) — fusion removes memory traffic, not precision.

use std::fmt::Write;

use tera::Context;

use super::{templates, Access, Generated, JobSpec, Kernel, KernelSpec};
use crate::ir::{DType, GeluApprox, Op, Operand, RopeStyle};

const NAME: &str = "__LANCET_KERNEL__";

/// The C++ type of an element of `dtype`.
pub fn ctype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float",
        DType::BF16 => "__nv_bfloat16",
        DType::F16 => "__half",
        DType::F8E4M3 => "__nv_fp8_e4m3",
        DType::F8E5M2 => "__nv_fp8_e5m2",
        DType::I32 => "int",
        DType::I64 => "long long",
    }
}

fn rounded(dtype: DType, expr: String) -> String {
    match dtype {
        DType::F32 => expr,
        d => format!("round_to<{}>({expr})", ctype(d)),
    }
}

/// `i0 * s0 + … + i_last * s_last` for an access (`last` false: without the last axis).
fn offset(access: &Access, with_last: bool) -> String {
    let rank = access.strides.len();
    let mut terms: Vec<String> = Vec::new();
    for (k, &s) in access.strides.iter().enumerate() {
        let index = if k + 1 == rank {
            "i_last".to_string()
        } else {
            format!("i{k}")
        };
        if s == 0 || (k + 1 == rank && !with_last) {
            continue;
        }
        terms.push(if s == 1 { index } else { format!("{index} * {s}") });
    }
    if terms.is_empty() {
        "0".into()
    } else {
        terms.join(" + ")
    }
}

fn last_stride(access: &Access) -> usize {
    *access.strides.last().unwrap_or(&0)
}

/// Code that splits a flat index `var` over the leading axes of `shape` into `i0 …`.
fn split_index(var: &str, dims: &[usize]) -> String {
    let mut out = String::new();
    if dims.is_empty() {
        return out;
    }
    writeln!(out, "    i64 r = {var};").unwrap();
    for k in (0..dims.len()).rev() {
        if k == 0 {
            writeln!(out, "    const i64 i0 = r;").unwrap();
        } else {
            writeln!(out, "    const i64 i{k} = r % {d}; r /= {d};", d = dims[k]).unwrap();
        }
    }
    writeln!(out, "    (void)r;").unwrap();
    out
}

/// Whether argument `a` is read as a plain value somewhere (not only through the special
/// accesses of embeddings and of the norm input in a row kernel).
fn plain_use(job: &JobSpec, a: u16, row: bool) -> bool {
    job.program.instrs.iter().any(|i| {
        i.operands.iter().enumerate().any(|(slot, &o)| {
            o == Operand::Arg(a)
                && !matches!(i.op, Op::Embedding)
                && !(row && i.op.is_row_reduction() && slot == 0)
        })
    })
}

/// The loads, instructions and store of one vector of `job`, and the amax accumulators.
struct Body {
    code: String,
    amax: usize,
}

fn body(job: &JobSpec, row: bool, indent: &str) -> Body {
    let v = job.vec;
    let mut code = String::new();
    let mut line = |s: String| {
        code.push_str(indent);
        code.push_str(&s);
        code.push('\n');
    };
    for (a, access) in job.args.iter().enumerate() {
        if !plain_use(job, a as u16, row) {
            continue;
        }
        let t = ctype(access.dtype);
        match last_stride(access) {
            0 => {
                line(format!("float a{a}[V];"));
                line(format!(
                    "{{ const float s = to_f32(arg{a}[{}]); for (int j = 0; j < V; ++j) a{a}[j] = s; }}",
                    offset(access, true)
                ));
            }
            s => {
                line(format!("float a{a}[V];"));
                line(format!(
                    "load<{t}, V, {s}>(arg{a} + {}, a{a});",
                    offset(access, true)
                ));
            }
        }
    }
    let operand = |o: Operand| match o {
        Operand::Arg(a) => format!("a{a}[j]"),
        Operand::Instr(i) => format!("v{i}[j]"),
    };
    let types = instr_types(job);
    let rank = job.shape.len();
    let mut amax = 0;
    // RoPE tables follow the program's own arguments, one per RoPE instruction in order.
    let mut tables = job.args.len()
        - job
            .program
            .instrs
            .iter()
            .filter(|i| matches!(i.op, Op::Rope { .. }))
            .count();
    for (k, instr) in job.program.instrs.iter().enumerate() {
        let dtype = types[k];
        let ops: Vec<String> = instr.operands.iter().map(|&o| operand(o)).collect();
        line(format!("float v{k}[V];  // {}", instr.op.kind()));
        match &instr.op {
            Op::Rope {
                style, rotary_dim, ..
            } => {
                let Operand::Arg(a) = instr.operands[0] else {
                    unreachable!("RoPE reads its input from memory")
                };
                let access = &job.args[a as usize];
                let (t, s) = (ctype(access.dtype), last_stride(access));
                let r = *rotary_dim;
                let half = r / 2;
                let table = tables;
                tables += 1;
                line("{".into());
                line(format!(
                    "    const float* angles = arg{table} + i{} * {};  // (cos, sin) per pair",
                    rank - 3,
                    r
                ));
                line("    float p[V];".into());
                match style {
                    RopeStyle::Neox => {
                        line(format!("    const bool lo = i_last < {half};"));
                        line(format!(
                            "    if (i_last < {r}) load<{t}, V, {s}>(arg{a} + {} + (lo ? i_last + {half} : i_last - {half}) * {s}, p);",
                            offset(access, false)
                        ));
                    }
                    RopeStyle::Gptj if v > 1 => {
                        line(format!("    for (int j = 0; j < V; ++j) p[j] = a{a}[j ^ 1];"))
                    }
                    RopeStyle::Gptj => line(format!(
                        "    if (i_last < {r}) p[0] = to_f32(arg{a}[{} + (i_last ^ 1) * {s}]);",
                        offset(access, false)
                    )),
                }
                line("#pragma unroll".into());
                line("    for (int j = 0; j < V; ++j) {".into());
                line("        const i64 c = i_last + j;".into());
                line(format!("        float y = a{a}[j];"));
                line(format!("        if (c < {r}) {{"));
                let (first, k_expr) = match style {
                    RopeStyle::Neox => (format!("c < {half}"), format!("int(c < {half} ? c : c - {half})")),
                    RopeStyle::Gptj => ("(c & 1) == 0".to_string(), "int(c >> 1)".to_string()),
                };
                line(format!("            const int k = {k_expr};"));
                line("            const float cs = angles[2 * k], sn = angles[2 * k + 1];".into());
                line(format!(
                    "            y = ({first}) ? y * cs - p[j] * sn : y * cs + p[j] * sn;"
                ));
                line("        }".into());
                line(format!("        v{k}[j] = {};", rounded(dtype, "y".into())));
                line("    }".into());
                line("}".into());
            }
            Op::Embedding => {
                let (Operand::Arg(table), Operand::Arg(ids)) = (instr.operands[0], instr.operands[1]) else {
                    unreachable!("embeddings read table and ids from memory")
                };
                let (ta, ia) = (&job.args[table as usize], &job.args[ids as usize]);
                let vocab = ta.shape[0];
                line("{".into());
                line(format!(
                    "    const i64 id = (i64)arg{ids}[{}];",
                    offset(ia, false)
                ));
                line(format!(
                    "    if (id >= 0 && id < {vocab}) load<{}, V, {}>(arg{table} + id * {} + i_last * {}, v{k});",
                    ctype(ta.dtype),
                    ta.strides[1],
                    ta.strides[0],
                    ta.strides[1]
                ));
                line(format!("    else for (int j = 0; j < V; ++j) v{k}[j] = __int_as_float(0x7fc00000);  // NaN marks an id outside the table"));
                line("}".into());
            }
            op => {
                let expr = match op {
                    Op::Add => format!("{} + {}", ops[0], ops[1]),
                    Op::Mul => format!("{} * {}", ops[0], ops[1]),
                    Op::Silu => format!("silu({})", ops[0]),
                    Op::Gelu {
                        approx: GeluApprox::None,
                    } => format!("gelu_erf({})", ops[0]),
                    Op::Gelu {
                        approx: GeluApprox::Tanh,
                    } => format!("gelu_tanh({})", ops[0]),
                    Op::Cast { .. } => ops[0].clone(),
                    // The correctly rounded reciprocal (what the reference multiplies by), without
                    // the division slow path's call, which made ptxas spill around it.
                    Op::Quantize { .. } => format!("{} * __frcp_rn({})", ops[0], ops[1]),
                    Op::Dequantize { .. } => format!("{} * {}", ops[0], ops[1]),
                    Op::RmsNorm { .. } => format!("xr[c][j] * inv * {}", ops[1]),
                    Op::LayerNorm { .. } => format!("(xr[c][j] - mean) * inv * {} + {}", ops[1], ops[2]),
                    other => unreachable!("{} is not fusible", other.kind()),
                };
                let mut stmt = format!("v{k}[j] = {};", rounded(dtype, expr));
                if matches!(op, Op::Quantize { .. }) {
                    stmt = format!("amax{amax} = fmaxf(amax{amax}, fabsf({})); {stmt}", ops[0]);
                    amax += 1;
                }
                line(format!(
                    "#pragma unroll\n{indent}for (int j = 0; j < V; ++j) {{ {stmt} }}"
                ));
            }
        }
    }
    let last = job.program.instrs.len() - 1;
    line(format!(
        "store<{}, V, {}>(out + {}, v{last});",
        ctype(job.out.dtype),
        last_stride(&job.out),
        offset(&job.out, true)
    ));
    Body { code, amax }
}

/// The dtype of every instruction's result.
fn instr_types(job: &JobSpec) -> Vec<DType> {
    let args: Vec<crate::ir::TensorType> = job
        .args
        .iter()
        .map(|a| crate::ir::TensorType::new(a.dtype, a.shape.clone()))
        .collect();
    let refs: Vec<&crate::ir::TensorType> = args.iter().collect();
    job.program
        .infer(&refs)
        .expect("kernel programs are type-checked")
        .into_iter()
        .map(|t| t.dtype)
        .collect()
}

/// Parameter declarations of one job, with `prefix` on every name.
fn params(job: &JobSpec, prefix: &str, amax: usize) -> Vec<String> {
    let mut p: Vec<String> = job
        .args
        .iter()
        .enumerate()
        .map(|(a, access)| format!("const {}* __restrict__ {prefix}arg{a}", ctype(access.dtype)))
        .collect();
    p.push(format!("{}* __restrict__ {prefix}out", ctype(job.out.dtype)));
    // Accumulators are `amaxQ`; the pointers they are recorded into are `amax_ptrQ`.
    p.extend((0..amax).map(|q| format!("float* __restrict__ {prefix}amax_ptr{q}")));
    p
}

fn names(params: &[String]) -> Vec<String> {
    params
        .iter()
        .map(|p| p.rsplit(' ').next().unwrap().to_string())
        .collect()
}

fn elementwise(spec: &KernelSpec) -> String {
    let mut jobs = Vec::new();
    let mut all_params = Vec::new();
    let mut block_begin = 0;
    for (j, job) in spec.jobs.iter().enumerate() {
        let body = body(job, false, "        ");
        let rank = job.shape.len();
        let last = job.shape[rank - 1];
        // A grid-stride loop: each thread handles vectors t, t + stride, … so that a capped grid
        // (one wave) covers any size, and the amax of a quantize is reduced once per block.
        let mut code = String::new();
        for q in 0..body.amax {
            writeln!(code, "    float amax{q} = 0.0f;").unwrap();
        }
        writeln!(
            code,
            "    for (i64 t = t0; t < {}; t += stride) {{",
            job.numel() / job.vec
        )
        .unwrap();
        writeln!(code, "        const i64 i_last = (t % {}) * V;", last / job.vec).unwrap();
        let split = split_index(&format!("t / {}", last / job.vec), &job.shape[..rank - 1]);
        split.lines().for_each(|l| writeln!(code, "    {l}").unwrap());
        writeln!(code, "{}    }}", body.code).unwrap();
        for q in 0..body.amax {
            writeln!(code, "    record_amax(amax_ptr{q}, amax{q});").unwrap();
        }
        let job_params = params(job, "", body.amax);
        let prefixed = params(job, &format!("j{j}_"), body.amax);
        let blocks = super::job_blocks(job);
        let mut ctx = Context::new();
        ctx.insert("summary", &job.program.to_string().trim_end().replace('\n', "; "));
        ctx.insert("params", &job_params.join(", "));
        ctx.insert("vec", &job.vec);
        ctx.insert("body", &code);
        ctx.insert("args", &names(&prefixed).join(", "));
        ctx.insert("block_begin", &block_begin);
        block_begin += blocks;
        ctx.insert("block_end", &block_begin);
        jobs.push(ctx.into_json());
        all_params.extend(prefixed);
    }
    let mut ctx = Context::new();
    ctx.insert("name", NAME);
    ctx.insert("jobs", &jobs);
    ctx.insert("params", &all_params.join(", "));
    ctx.insert("block", &super::ELEMENTWISE_BLOCK);
    templates::render("elementwise.cu.tera", &ctx)
}

fn row(spec: &KernelSpec) -> String {
    let job = &spec.jobs[0];
    let geometry = KernelSpec::row_geometry(job);
    let (block, chunks) = (geometry.block, geometry.chunks);
    let rank = job.shape.len();
    let norm = job
        .program
        .instrs
        .iter()
        .find(|i| i.op.is_row_reduction())
        .expect("row kernels have a norm");
    let Operand::Arg(x) = norm.operands[0] else {
        unreachable!("norms read their input from memory")
    };
    let access = &job.args[x as usize];
    let n = job.shape[rank - 1];
    let (sum_term, stats) = match &norm.op {
        Op::RmsNorm { eps } => (
            "xr[c][j] * xr[c][j]",
            format!("    const float inv = rsqrtf(row_sum(sum) / {n}.0f + {:?}f);", eps.get()),
        ),
        Op::LayerNorm { eps } => (
            "xr[c][j]",
            format!(
                "    const float mean = row_sum(sum) / {n}.0f;\n    float sq = 0.0f;\n#pragma unroll\n    for (int c = 0; c < CHUNKS; ++c)\n        if (live && c * LANES + lane < VPR)\n            for (int j = 0; j < V; ++j) sq += (xr[c][j] - mean) * (xr[c][j] - mean);\n    const float inv = rsqrtf(row_sum(sq) / {n}.0f + {:?}f);",
                eps.get()
            ),
        ),
        _ => unreachable!(),
    };
    let body = body(job, true, "            ");
    let amax_decl: String = (0..body.amax)
        .map(|q| format!("    float amax{q} = 0.0f;\n"))
        .collect();
    let amax_record: String = (0..body.amax)
        .map(|q| format!("    record_amax(amax_ptr{q}, amax{q});\n"))
        .collect();
    let p = params(job, "", body.amax);
    let mut ctx = Context::new();
    ctx.insert("name", NAME);
    ctx.insert("params", &p.join(", "));
    ctx.insert("block", &block);
    ctx.insert("chunks", &chunks);
    ctx.insert("lanes", &geometry.lanes);
    ctx.insert("rows", &geometry.rows_per_block);
    ctx.insert("total_rows", &(job.numel() / n));
    ctx.insert("vec", &job.vec);
    ctx.insert("row", &n);
    ctx.insert(
        "row_index",
        &split_index("live ? row : 0", &job.shape[..rank - 1]),
    );
    ctx.insert("x_type", ctype(access.dtype));
    ctx.insert("x_last_stride", &last_stride(access));
    ctx.insert("x_arg", &x);
    ctx.insert("x_offset", &offset(access, true));
    ctx.insert("sum_term", sum_term);
    ctx.insert("stats", &stats);
    ctx.insert("amax_decl", &amax_decl);
    ctx.insert("body", &body.code);
    ctx.insert("amax_record", &amax_record);
    templates::render("row.cu.tera", &ctx)
}

/// FNV-1a: a stable content hash for kernel names (std's hashers may change between releases).
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn kernel(spec: KernelSpec, nodes: Vec<String>) -> Kernel {
    let (template, body) = if spec.is_elementwise() {
        ("elementwise.cu.tera", elementwise(&spec))
    } else {
        ("row.cu.tera", row(&spec))
    };
    let mut ops: Vec<&str> = Vec::new();
    for job in &spec.jobs {
        for i in &job.program.instrs {
            if !ops.contains(&i.op.kind()) {
                ops.push(i.op.kind());
            }
        }
    }
    let name = format!("{}_{:08x}", ops.join("_"), fnv1a(&body) as u32);
    let body = body.replace(NAME, &name);
    let mut header = super::header(&name, template, &nodes);
    for (j, job) in spec.jobs.iter().enumerate() {
        write!(
            header,
            "\n// job {j} over {:?}, {} element(s) per thread:",
            job.shape, job.vec
        )
        .unwrap();
        for line in job.program.to_string().lines() {
            write!(header, "\n//   {line}").unwrap();
        }
    }
    header.push('\n');
    Kernel {
        name,
        template,
        header,
        body,
        spec: Generated::Fused(spec),
        nodes,
    }
}
