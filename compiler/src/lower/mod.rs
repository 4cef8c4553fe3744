//! Lowering: an (optimized) graph becomes a [`Plan`] — an ordered list of generated-kernel,
//! GEMM and attention steps over named buffers, with a memory plan for the activations.
//!
//! Views are resolved here, not in kernels: a reshape, permute or slice becomes a strided
//! [`View`] of its source whenever the consumer accepts one (generated kernels always do; GEMM
//! operands when rows have unit stride; attention when the head dimension does), so the packed
//! QKV buffer feeds RoPE and attention without a copy. A view that strides cannot express gets a
//! copy kernel. Any fusible op left unfused becomes a one-instruction kernel, so `--fusion off`
//! is the one-kernel-per-glue-op baseline.

pub mod layout;
pub mod memory;
pub mod plan;

use std::collections::HashMap;

use thiserror::Error;

use crate::codegen::gated_gemm;
use crate::codegen::{self, GatedGemmSpec, Generated, JobSpec, KernelSpec};
use crate::ir::{DType, GateAct, Graph, Instr, NodeId, Op, Operand, Origin, Program, RopeScaling};
pub use layout::{BufferId, View};
pub use plan::{
    AttentionStep, Buffer, BufferKind, Fp8Scales, GatedGemmStep, GemmStep, KernelStep, Plan, Step,
};

/// A graph lowering cannot handle.
#[derive(Debug, Error)]
pub enum LowerError {
    #[error("node {node} ({op} '{name}'): {message}")]
    Unsupported {
        node: NodeId,
        op: &'static str,
        name: String,
        message: String,
    },
}

struct Lowering<'g> {
    graph: &'g Graph,
    buffers: Vec<Buffer>,
    steps: Vec<Step>,
    /// The spec of every generated-kernel step (indexed by `KernelStep::kernel` and
    /// `GatedGemmStep::kernel` until `finish` dedups them into [`Plan::kernels`]).
    specs: Vec<Generated>,
    /// Each lowered node's value, by node id.
    values: Vec<Option<View>>,
    amax_slots: Vec<String>,
    /// Where gated GEMMs run their epilogue, where their `mid` type allows it.
    gated_epilogue: gated_gemm::Epilogue,
}

/// Choices lowering leaves to its caller.
#[derive(Clone, Debug)]
pub struct LowerOptions {
    /// Merge adjacent independent elementwise launches into one (off for the one-kernel-per-op
    /// baseline).
    pub merge_launches: bool,
    /// Where gated GEMMs run their epilogue (default [`gated_gemm::EPILOGUE`]); a gated GEMM
    /// whose `mid` the staged epilogue cannot hold keeps it in registers.
    pub gated_epilogue: gated_gemm::Epilogue,
}

impl Default for LowerOptions {
    fn default() -> Self {
        LowerOptions {
            merge_launches: true,
            gated_epilogue: gated_gemm::EPILOGUE,
        }
    }
}

/// Lowers `graph` to a plan (and generates the source of its kernels).
pub fn lower(graph: &Graph) -> Result<Plan, LowerError> {
    lower_with(graph, &LowerOptions::default())
}

/// [`lower`] with explicit options.
pub fn lower_with(graph: &Graph, options: &LowerOptions) -> Result<Plan, LowerError> {
    let mut l = Lowering {
        graph,
        buffers: Vec::new(),
        steps: Vec::new(),
        specs: Vec::new(),
        values: vec![None; graph.len()],
        amax_slots: Vec::new(),
        gated_epilogue: options.gated_epilogue,
    };
    for id in graph.ids() {
        l.values[id.index()] = Some(l.node(id)?);
    }
    if options.merge_launches {
        l.merge_horizontal();
    }
    l.finish()
}

impl<'g> Lowering<'g> {
    fn value(&self, id: NodeId) -> &View {
        self.values[id.index()]
            .as_ref()
            .expect("operands are lowered first")
    }

    fn buffer(&mut self, name: &str, kind: BufferKind, dtype: DType, elems: usize) -> BufferId {
        self.buffers.push(Buffer {
            name: name.to_string(),
            kind,
            dtype,
            elems,
            offset: None,
            data: None,
            init: None,
        });
        self.buffers.len() - 1
    }

    /// The rotation table of a RoPE over `seq` positions, shared by every kernel that needs it.
    fn rope_table(
        &mut self,
        seq: usize,
        rotary_dim: usize,
        theta: f32,
        scaling: Option<&RopeScaling>,
    ) -> View {
        let name = match scaling {
            None => format!("rope_table.s{seq}.r{rotary_dim}.theta{theta}"),
            Some(s) => format!(
                "rope_table.s{seq}.r{rotary_dim}.theta{theta}.llama3_{}_{}_{}_{}",
                s.factor.get(),
                s.low_freq_factor.get(),
                s.high_freq_factor.get(),
                s.original_context
            ),
        };
        let shape = [seq, rotary_dim / 2, 2];
        if let Some(b) = self.buffers.iter().position(|b| b.name == name) {
            return View::contiguous(b, DType::F32, &shape);
        }
        let b = self.buffer(&name, BufferKind::Constant, DType::F32, seq * rotary_dim);
        self.buffers[b].data = Some(crate::reference::kernels::rope_table(
            seq, rotary_dim, theta, scaling,
        ));
        View::contiguous(b, DType::F32, &shape)
    }

    fn activation(&mut self, name: &str, dtype: DType, shape: &[usize]) -> View {
        let b = self.buffer(name, BufferKind::Activation, dtype, shape.iter().product());
        View::contiguous(b, dtype, shape)
    }

    fn unsupported(&self, id: NodeId, message: String) -> LowerError {
        let node = self.graph.node(id);
        LowerError::Unsupported {
            node: id,
            op: node.op.kind(),
            name: node.name.clone(),
            message,
        }
    }

    fn node(&mut self, id: NodeId) -> Result<View, LowerError> {
        let node = self.graph.node(id);
        let ty = &node.ty;
        let operands = self.graph.operands(id);
        let args: Vec<View> = operands.iter().map(|&o| self.value(o).clone()).collect();
        Ok(match &node.op {
            Op::Input { .. } => {
                let b = self.buffer(&node.name, BufferKind::Input, ty.dtype, ty.numel());
                View::contiguous(b, ty.dtype, ty.shape.dims())
            }
            Op::Param { init, .. } => {
                let b = self.buffer(&node.name, BufferKind::Param, ty.dtype, ty.numel());
                self.buffers[b].init = Some(init.clone());
                View::contiguous(b, ty.dtype, ty.shape.dims())
            }
            Op::Reshape { shape } => match args[0].reshape(shape.dims()) {
                Some(v) => v,
                None => self
                    .copy(&node.name, &args[0])
                    .reshape(shape.dims())
                    .expect("contiguous views reshape"),
            },
            Op::Permute { perm } => args[0].permute(perm),
            Op::Slice { axis, start, end } => args[0].slice(*axis, *start, *end),
            Op::Concat { axis } => {
                let out = self.activation(&node.name, ty.dtype, ty.shape.dims());
                let mut start = 0;
                for a in &args {
                    let len = a.shape[*axis];
                    let dst = out.slice(*axis, start, start + len);
                    self.kernel(
                        &node.name,
                        copy_program(&node.name, a.dtype),
                        vec![a.clone()],
                        dst,
                    );
                    start += len;
                }
                out
            }
            Op::Linear { .. } | Op::LinearAdd { .. } => self.gemm(id, args)?,
            &Op::GatedLinear { act, mid, out } => self.gated_gemm(id, args, (act, mid, out))?,
            Op::Attention { causal, scale } => self.attention(id, &args, *causal, scale.get(), None),
            Op::Fp8Attention {
                causal,
                scale,
                p_scale,
                ..
            } => {
                self.amax_slots.push(node.name.clone());
                let fp8 = Fp8Scales {
                    q: args[3].clone(),
                    k: args[4].clone(),
                    v: args[5].clone(),
                    o: args[6].clone(),
                    p_scale: p_scale.get(),
                    amax_slot: self.amax_slots.len() - 1,
                };
                self.attention(id, &args, *causal, scale.get(), Some(fp8))
            }
            Op::Output => {
                let src = &args[0];
                let whole = src.is_contiguous()
                    && src.offset == 0
                    && self.buffers[src.buffer].elems == src.numel()
                    && self.buffers[src.buffer].kind == BufferKind::Activation;
                if whole {
                    let b = &mut self.buffers[src.buffer];
                    b.kind = BufferKind::Output;
                    b.name = node.name.clone();
                    src.clone()
                } else {
                    let b = self.buffer(&node.name, BufferKind::Output, ty.dtype, ty.numel());
                    let dst = View::contiguous(b, ty.dtype, ty.shape.dims());
                    self.kernel(
                        &node.name,
                        copy_program(&node.name, ty.dtype),
                        vec![src.clone()],
                        dst.clone(),
                    );
                    dst
                }
            }
            Op::Fused { program } => {
                let out = self.activation(&node.name, ty.dtype, ty.shape.dims());
                self.kernel(&node.name, program.clone(), args, out.clone());
                out
            }
            op if op.has_kernel() => {
                let out = self.activation(&node.name, ty.dtype, ty.shape.dims());
                let program = Program {
                    instrs: vec![Instr {
                        op: op.clone(),
                        operands: (0..args.len() as u16).map(Operand::Arg).collect(),
                        origin: Origin(node.name.clone()),
                    }],
                };
                self.kernel(&node.name, program, args, out.clone());
                out
            }
            op => return Err(self.unsupported(id, format!("lowering has no rule for {}", op.kind()))),
        })
    }

    /// An attention step over `args[..3]` (Q, K, V), writing a fresh output.
    fn attention(
        &mut self,
        id: NodeId,
        args: &[View],
        causal: bool,
        scale: f32,
        fp8: Option<Fp8Scales>,
    ) -> View {
        let node = self.graph.node(id);
        let (name, ty) = (node.name.clone(), node.ty.clone());
        let [q, k, v] = [0, 1, 2].map(|i| self.unit_last_stride(&name, &args[i]));
        // Written as [b, s, h, d] and seen as [b, h, s, d]: the merge-heads permute and reshape
        // that follow become free views.
        let d = ty.shape.dims();
        let o = self
            .activation(&name, ty.dtype, &[d[0], d[2], d[1], d[3]])
            .permute(&[0, 2, 1, 3]);
        self.steps.push(Step::Attention(AttentionStep {
            q,
            k,
            v,
            o: o.clone(),
            causal,
            scale,
            fp8,
            node: name,
        }));
        o
    }

    /// A contiguous copy of `src` in a new activation buffer.
    fn copy(&mut self, name: &str, src: &View) -> View {
        let dst = self.activation(name, src.dtype, &src.shape);
        self.kernel(
            name,
            copy_program(name, src.dtype),
            vec![src.clone()],
            dst.clone(),
        );
        dst
    }

    fn unit_last_stride(&mut self, name: &str, v: &View) -> View {
        if v.strides.last() == Some(&1) {
            v.clone()
        } else {
            self.copy(name, v)
        }
    }

    fn gemm(&mut self, id: NodeId, args: Vec<View>) -> Result<View, LowerError> {
        let node = self.graph.node(id);
        let residual = matches!(node.op, Op::LinearAdd { .. });
        let (mut args, residual) = if residual {
            let mut args = args;
            let r = args.pop();
            (args, r)
        } else {
            (args, None)
        };
        let x = match args[0].as_matrix() {
            Some(_) => args[0].clone(),
            None => self.copy(&node.name, &args[0]),
        };
        let (m, k, ldx) = x.as_matrix().expect("copies are matrices");
        if !args[1].is_contiguous() {
            args[1] = self.copy(&node.name, &args[1]);
        }
        let n = args[1].shape[0];
        let residual = residual.map(|r| {
            if r.is_contiguous() {
                r
            } else {
                self.copy(&node.name, &r)
            }
        });
        let out = self.activation(&node.name, node.ty.dtype, node.ty.shape.dims());
        let scales = (args.len() == 4).then(|| (args[2].clone(), args[3].clone()));
        self.steps.push(Step::Gemm(GemmStep {
            x,
            w: args[1].clone(),
            scales,
            residual,
            out: out.clone(),
            m,
            n,
            k,
            ldx,
            node: node.name.clone(),
        }));
        Ok(out)
    }

    /// A gated GEMM step: `x` as a dense row-major `[m, k]` matrix (copied when it is not one),
    /// the weight contiguous, a fresh output and an amax slot named after the node.
    fn gated_gemm(
        &mut self,
        id: NodeId,
        args: Vec<View>,
        (act, mid, out_type): (GateAct, DType, DType),
    ) -> Result<View, LowerError> {
        let node = self.graph.node(id);
        let k = args[0]
            .shape
            .last()
            .copied()
            .expect("linear inputs have rank >= 1");
        let f = node.ty.shape.last();
        if let Some(why) = gated_gemm::refusal(act, k, f) {
            return Err(self.unsupported(id, why));
        }
        let x = match args[0].as_matrix() {
            Some((_, _, ld)) if ld == k => args[0].clone(),
            _ => self.copy(&node.name, &args[0]),
        };
        let (m, _, _) = x.as_matrix().expect("copies are matrices");
        let w = if args[1].is_contiguous() {
            args[1].clone()
        } else {
            self.copy(&node.name, &args[1])
        };
        let out = self.activation(&node.name, node.ty.dtype, node.ty.shape.dims());
        self.amax_slots.push(node.name.clone());
        // A cluster shares weight boxes between vertically adjacent tiles: with one row of tiles
        // the second CTA of each cluster would only multiply zeros.
        let cluster = if m <= gated_gemm::TILE_M {
            1
        } else {
            gated_gemm::CLUSTER
        };
        let epilogue = if gated_gemm::epilogue_supports(self.gated_epilogue, mid) {
            self.gated_epilogue
        } else {
            gated_gemm::Epilogue::Registers
        };
        self.specs.push(Generated::GatedGemm(GatedGemmSpec {
            act,
            mid,
            out: out_type,
            cluster,
            epilogue,
        }));
        self.steps.push(Step::GatedGemm(GatedGemmStep {
            kernel: self.specs.len() - 1,
            x,
            w,
            x_scale: args[2].clone(),
            w_scale: args[3].clone(),
            out_scale: args[4].clone(),
            out: out.clone(),
            m,
            f,
            k,
            amax_slot: self.amax_slots.len() - 1,
            node: node.name.clone(),
        }));
        Ok(out)
    }

    fn kernel(&mut self, name: &str, program: Program, mut args: Vec<View>, out: View) {
        // Each RoPE reads its (cos, sin) table as an extra argument after the program's own.
        for instr in &program.instrs {
            if let Op::Rope {
                theta,
                rotary_dim,
                scaling,
                ..
            } = instr.op
            {
                let seq = out.shape[out.shape.len() - 3];
                let table = self.rope_table(seq, rotary_dim, theta.get(), scaling.as_ref());
                args.push(table);
            }
        }
        let amax: Vec<usize> = program
            .instrs
            .iter()
            .filter(|i| matches!(i.op, Op::Quantize { .. }))
            .map(|i| {
                self.amax_slots.push(if i.origin.0.is_empty() {
                    name.to_string()
                } else {
                    i.origin.0.clone()
                });
                self.amax_slots.len() - 1
            })
            .collect();
        let nodes = program
            .origins()
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>();
        let job = JobSpec::new(program, &args, &out);
        let spec = KernelSpec { jobs: vec![job] };
        let (grid, block) = spec.launch();
        self.specs.push(Generated::Fused(spec));
        self.steps.push(Step::Kernel(KernelStep {
            kernel: self.specs.len() - 1,
            args: vec![args],
            outs: vec![out],
            amax: vec![amax],
            nodes: if nodes.is_empty() {
                vec![name.to_string()]
            } else {
                nodes
            },
            grid,
            block,
        }));
    }

    /// Merges runs of adjacent, independent elementwise kernel launches into one launch with
    /// several jobs (RoPE of Q and of K, say): one launch instead of several, same traffic.
    fn merge_horizontal(&mut self) {
        let mut merged: Vec<Step> = Vec::with_capacity(self.steps.len());
        for step in std::mem::take(&mut self.steps) {
            if let (Some(Step::Kernel(prev)), Step::Kernel(next)) = (merged.last_mut(), &step) {
                let (a, b) = (self.fused(prev.kernel), self.fused(next.kernel));
                let independent = next
                    .args
                    .iter()
                    .flatten()
                    .all(|v| prev.outs.iter().all(|o| o.buffer != v.buffer));
                if independent && a.is_elementwise() && b.is_elementwise() {
                    let mut spec = a.clone();
                    spec.jobs.extend(b.jobs.iter().cloned());
                    let (grid, block) = spec.launch();
                    self.specs.push(Generated::Fused(spec));
                    prev.kernel = self.specs.len() - 1;
                    prev.args.extend(next.args.iter().cloned());
                    prev.outs.extend(next.outs.iter().cloned());
                    prev.amax.extend(next.amax.iter().cloned());
                    prev.nodes.extend(next.nodes.iter().cloned());
                    prev.grid = grid;
                    prev.block = block;
                    continue;
                }
            }
            merged.push(step);
        }
        self.steps = merged;
    }

    /// The spec of kernel step `kernel`, which lowering only ever gives fused kernels.
    fn fused(&self, kernel: usize) -> &KernelSpec {
        self.specs[kernel]
            .fused()
            .expect("kernel steps run fused kernels")
    }

    fn finish(mut self) -> Result<Plan, LowerError> {
        // Unique kernels: steps with equal specs share one kernel (and one compile).
        let mut unique: HashMap<&Generated, usize> = HashMap::new();
        let mut kernel_of_spec = vec![usize::MAX; self.specs.len()];
        let mut kernels: Vec<(Generated, Vec<String>)> = Vec::new();
        for step in &self.steps {
            let (kernel, nodes) = match step {
                Step::Kernel(k) => (k.kernel, &k.nodes[..]),
                Step::GatedGemm(g) => (g.kernel, std::slice::from_ref(&g.node)),
                Step::Gemm(_) | Step::Attention(_) => continue,
            };
            let spec = &self.specs[kernel];
            let index = *unique.entry(spec).or_insert_with(|| {
                kernels.push((spec.clone(), Vec::new()));
                kernels.len() - 1
            });
            kernel_of_spec[kernel] = index;
            kernels[index].1.extend(nodes.iter().cloned());
        }
        for step in &mut self.steps {
            match step {
                Step::Kernel(k) => k.kernel = kernel_of_spec[k.kernel],
                Step::GatedGemm(g) => g.kernel = kernel_of_spec[g.kernel],
                Step::Gemm(_) | Step::Attention(_) => {}
            }
        }
        let kernels = kernels
            .into_iter()
            .map(|(spec, nodes)| codegen::generate(spec, nodes))
            .collect::<Vec<_>>();

        // Liveness of activations over steps, then arena placement.
        let mut first = vec![usize::MAX; self.buffers.len()];
        let mut last = vec![0usize; self.buffers.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for v in step_views(step) {
                first[v.buffer] = first[v.buffer].min(i);
                last[v.buffer] = last[v.buffer].max(i);
            }
        }
        let activations: Vec<BufferId> = (0..self.buffers.len())
            .filter(|&b| self.buffers[b].kind == BufferKind::Activation && first[b] != usize::MAX)
            .collect();
        let lifetimes: Vec<memory::Lifetime> = activations
            .iter()
            .map(|&b| memory::Lifetime {
                bytes: self.buffers[b].bytes(),
                first: first[b],
                last: last[b],
            })
            .collect();
        let (offsets, arena_bytes) = memory::plan(&lifetimes);
        for (&b, &o) in activations.iter().zip(&offsets) {
            self.buffers[b].offset = Some(o);
        }
        let unplanned_bytes = activations.iter().map(|&b| self.buffers[b].bytes()).sum();
        Ok(Plan {
            buffers: self.buffers,
            steps: self.steps,
            kernels,
            amax_slots: self.amax_slots,
            arena_bytes,
            unplanned_bytes,
        })
    }
}

/// A one-instruction program that copies its argument (a cast to its own type).
fn copy_program(name: &str, dtype: DType) -> Program {
    Program {
        instrs: vec![Instr {
            op: Op::Cast { to: dtype },
            operands: vec![Operand::Arg(0)],
            origin: Origin(name.to_string()),
        }],
    }
}

/// Every view a step reads or writes.
pub fn step_views(step: &Step) -> Vec<&View> {
    match step {
        Step::Kernel(k) => k.args.iter().flatten().chain(&k.outs).collect(),
        Step::Gemm(g) => {
            let mut v = vec![&g.x, &g.w, &g.out];
            if let Some((a, b)) = &g.scales {
                v.extend([a, b]);
            }
            v.extend(&g.residual);
            v
        }
        Step::GatedGemm(g) => vec![&g.x, &g.w, &g.x_scale, &g.w_scale, &g.out_scale, &g.out],
        Step::Attention(a) => {
            let mut views = vec![&a.q, &a.k, &a.v, &a.o];
            if let Some(s) = &a.fp8 {
                views.extend([&s.q, &s.k, &s.v, &s.o]);
            }
            views
        }
    }
}
