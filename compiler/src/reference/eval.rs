//! Evaluating a whole graph on the CPU.

use std::collections::HashMap;

use thiserror::Error;

use super::array::{broadcast_strides, gather, Array};
use super::kernels::{self, AttentionDims};
use super::numerics::round_slice;
use crate::ir::{DType, GateAct, Graph, Node, NodeId, Op, Operand, Program, Shape, TensorType};

/// Values for a graph's inputs and params, by binding name.
pub type Bindings = HashMap<String, Array>;

/// Why a graph could not be evaluated with the given bindings.
#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    #[error("node {node} ({op} '{name}'): no value bound for '{name}'")]
    Unbound {
        node: NodeId,
        op: &'static str,
        name: String,
    },
    #[error("node {node} ({op} '{name}'): bound value has shape {got}, expected {expected}")]
    BindingShape {
        node: NodeId,
        op: &'static str,
        name: String,
        expected: Shape,
        got: Shape,
    },
    #[error("node {node} (embedding '{name}'): id {id} at position {position} is outside the table's {vocab} rows")]
    IdOutOfRange {
        node: NodeId,
        name: String,
        id: f32,
        position: usize,
        vocab: usize,
    },
}

/// Evaluates `graph` and returns every output by name.
///
/// Arithmetic runs in f32 and each node's result is rounded to the node's dtype (bf16, FP8, …),
/// so stored tensors carry exactly the precision they have on the device. Bound values are
/// rounded to their node's dtype too. Intermediate values are dropped after their last use.
pub fn evaluate(graph: &Graph, bindings: &Bindings) -> Result<HashMap<String, Array>, EvalError> {
    // Uses are counted per operand slot: `mul(x, x)` reads x twice.
    let mut remaining_uses = vec![0usize; graph.len()];
    for id in graph.ids() {
        for o in graph.operands(id) {
            remaining_uses[o.index()] += 1;
        }
    }
    let mut values: Vec<Option<Array>> = vec![None; graph.len()];
    let mut outputs = HashMap::new();
    for (id, node) in graph.nodes() {
        let operands = graph.operands(id);
        let args: Vec<&Array> = operands
            .iter()
            .map(|o| {
                values[o.index()]
                    .as_ref()
                    .expect("operands are evaluated first and kept until their last use")
            })
            .collect();
        let arg_types: Vec<&TensorType> = operands.iter().map(|&o| &graph.node(o).ty).collect();
        let mut data = eval_node(id, node, &arg_types, &args, bindings)?;
        round_slice(node.ty.dtype, &mut data);
        let value = Array {
            shape: node.ty.shape.clone(),
            data,
        };
        for o in operands {
            remaining_uses[o.index()] -= 1;
            if remaining_uses[o.index()] == 0 {
                values[o.index()] = None;
            }
        }
        if matches!(node.op, Op::Output) {
            outputs.insert(node.name.clone(), value);
        } else {
            values[id.index()] = Some(value);
        }
    }
    Ok(outputs)
}

fn eval_node(
    id: NodeId,
    node: &Node,
    arg_types: &[&TensorType],
    args: &[&Array],
    bindings: &Bindings,
) -> Result<Vec<f32>, EvalError> {
    match &node.op {
        Op::Input { .. } | Op::Param { .. } => {
            let value = bindings.get(&node.name).ok_or_else(|| EvalError::Unbound {
                node: id,
                op: node.op.kind(),
                name: node.name.clone(),
            })?;
            if value.shape != node.ty.shape {
                return Err(EvalError::BindingShape {
                    node: id,
                    op: node.op.kind(),
                    name: node.name.clone(),
                    expected: node.ty.shape.clone(),
                    got: value.shape.clone(),
                });
            }
            Ok(value.data.clone())
        }
        Op::Fused { program } => fused(id, node, program, arg_types, args),
        op => compute(id, node, op, &node.ty.shape, args),
    }
}

/// Runs a fused program instruction by instruction, rounding each result to its dtype exactly
/// as the unfused graph rounds each node: fusion changes where values live, not what they are.
fn fused(
    id: NodeId,
    node: &Node,
    program: &Program,
    arg_types: &[&TensorType],
    args: &[&Array],
) -> Result<Vec<f32>, EvalError> {
    let types = program
        .infer(arg_types)
        .expect("fused nodes are type-checked when added");
    let mut results: Vec<Array> = Vec::with_capacity(program.instrs.len());
    for (instr, ty) in program.instrs.iter().zip(types) {
        let operands: Vec<&Array> = instr
            .operands
            .iter()
            .map(|o| match *o {
                Operand::Arg(a) => args[a as usize],
                Operand::Instr(i) => &results[i as usize],
            })
            .collect();
        let mut data = compute(id, node, &instr.op, &ty.shape, &operands)?;
        round_slice(ty.dtype, &mut data);
        results.push(Array {
            shape: ty.shape,
            data,
        });
    }
    Ok(results.pop().expect("programs are non-empty").data)
}

/// Evaluates a compute op (anything but a leaf or a fused kernel) without rounding its result.
fn compute(id: NodeId, node: &Node, op: &Op, shape: &Shape, args: &[&Array]) -> Result<Vec<f32>, EvalError> {
    Ok(match op {
        Op::Input { .. } | Op::Param { .. } | Op::Fused { .. } => unreachable!("handled by eval_node"),
        Op::Embedding => embedding(id, node, args[0], args[1])?,
        Op::RmsNorm { eps } => kernels::rms_norm(&args[0].data, &args[1].data, eps.get()),
        Op::LayerNorm { eps } => kernels::layer_norm(&args[0].data, &args[1].data, &args[2].data, eps.get()),
        Op::Linear { .. } => linear(args),
        // One rounding of `x·wᵀ·s + residual`, as the GEMM epilogue computes it.
        Op::LinearAdd { .. } => {
            let (residual, linear_args) = args.split_last().expect("arity checked");
            let mut y = linear(linear_args);
            y.iter_mut().zip(&residual.data).for_each(|(y, r)| *y += r);
            y
        }
        &Op::GatedLinear { act, mid, out } => gated_linear(id, node, (act, mid, out), shape, args)?,
        Op::Reshape { .. } | Op::Output => args[0].data.clone(),
        Op::Permute { perm } => {
            let strides = args[0].shape.strides();
            let permuted: Vec<usize> = perm.iter().map(|&a| strides[a]).collect();
            gather(&args[0].data, shape.dims(), &permuted, 0)
        }
        Op::Slice { axis, start, .. } => {
            let strides = args[0].shape.strides();
            gather(&args[0].data, shape.dims(), &strides, start * strides[*axis])
        }
        Op::Concat { axis } => concat(args, *axis, shape),
        Op::Rope {
            style,
            theta,
            rotary_dim,
            scaling,
        } => {
            let d = args[0].shape.dims();
            let r = d.len();
            let table = kernels::rope_table(d[r - 3], *rotary_dim, theta.get(), scaling.as_ref());
            kernels::rope(
                &args[0].data,
                [d[r - 3], d[r - 2], d[r - 1]],
                *style,
                &table,
                *rotary_dim,
            )
        }
        // The probabilities weigh V in the attention's own precision (bf16 in cuDNN's kernels).
        Op::Attention { causal, scale } => kernels::attention(
            &args[0].data,
            &args[1].data,
            &args[2].data,
            attention_dims(args),
            *causal,
            scale.get(),
            (node.ty.dtype != DType::F32).then_some((node.ty.dtype, 1.0)),
        ),
        // Saturation and FP8 rounding of the result happen when it is rounded to the node's dtype.
        Op::Fp8Attention {
            causal,
            scale,
            p_scale,
            ..
        } => {
            let real = |i: usize| {
                let s = args[i + 3].data[0];
                args[i].data.iter().map(|&x| x * s).collect::<Vec<f32>>()
            };
            let (q, k, v) = (real(0), real(1), real(2));
            let o = kernels::attention(
                &q,
                &k,
                &v,
                attention_dims(args),
                *causal,
                scale.get(),
                Some((DType::F8E4M3, p_scale.get())),
            );
            let inv = 1.0 / args[6].data[0];
            o.into_iter().map(|x| x * inv).collect()
        }
        Op::Add => binary(args, shape, |a, b| a + b),
        Op::Mul => binary(args, shape, |a, b| a * b),
        Op::Silu => args[0].data.iter().map(|&x| kernels::silu(x)).collect(),
        Op::Gelu { approx } => args[0].data.iter().map(|&x| kernels::gelu(x, *approx)).collect(),
        Op::Cast { .. } => args[0].data.clone(),
        // Saturation and FP8 rounding happen when the result is rounded to the node's dtype.
        Op::Quantize { .. } => {
            let inv = 1.0 / args[1].data[0];
            args[0].data.iter().map(|&x| x * inv).collect()
        }
        Op::Dequantize { .. } => {
            let scale = args[1].data[0];
            args[0].data.iter().map(|&x| x * scale).collect()
        }
    })
}

/// [`Op::GatedLinear`] of output shape `half` as the chain it replaces: linear, the two slices,
/// the activation and the product, each rounded to `mid` as the unfused graph stores it, then the
/// quantize (rounded by the caller, like any node's result).
fn gated_linear(
    id: NodeId,
    node: &Node,
    (act, mid, out): (GateAct, DType, DType),
    half: &Shape,
    args: &[&Array],
) -> Result<Vec<f32>, EvalError> {
    let (linear_args, out_scale) = args.split_at(4);
    let (axis, f) = (half.rank() - 1, half.last());
    let mut packed = half.clone();
    packed.0[axis] = 2 * f;
    let step = |op: &Op, shape: &Shape, operands: &[&Array]| -> Result<Array, EvalError> {
        let mut data = compute(id, node, op, shape, operands)?;
        round_slice(mid, &mut data);
        Ok(Array {
            shape: shape.clone(),
            data,
        })
    };
    let y = step(&Op::Linear { out: mid }, &packed, linear_args)?;
    let gate = step(
        &Op::Slice {
            axis,
            start: 0,
            end: f,
        },
        half,
        &[&y],
    )?;
    let up = step(
        &Op::Slice {
            axis,
            start: f,
            end: 2 * f,
        },
        half,
        &[&y],
    )?;
    let a = step(&act.op(), half, &[&gate])?;
    let h = step(&Op::Mul, half, &[&a, &up])?;
    compute(id, node, &Op::Quantize { to: out }, half, &[&h, out_scale[0]])
}

fn attention_dims(args: &[&Array]) -> AttentionDims {
    let (q, k, v) = (args[0].shape.dims(), args[1].shape.dims(), args[2].shape.dims());
    AttentionDims {
        batch: q[0],
        q_heads: q[1],
        kv_heads: k[1],
        q_len: q[2],
        kv_len: k[2],
        head_dim: q[3],
        v_dim: v[3],
    }
}

fn linear(args: &[&Array]) -> Vec<f32> {
    let k = args[0].shape.last();
    let mut y = kernels::matmul_nt(&args[0].data, &args[1].data, k);
    if args.len() == 4 {
        let s = args[2].data[0] * args[3].data[0];
        y.iter_mut().for_each(|v| *v *= s);
    }
    y
}

fn embedding(id: NodeId, node: &Node, table: &Array, ids: &Array) -> Result<Vec<f32>, EvalError> {
    let (vocab, hidden) = (table.shape.0[0], table.shape.0[1]);
    let mut out = Vec::with_capacity(ids.len() * hidden);
    for (position, &token) in ids.data.iter().enumerate() {
        if !(token >= 0.0 && (token as usize) < vocab) {
            return Err(EvalError::IdOutOfRange {
                node: id,
                name: node.name.clone(),
                id: token,
                position,
                vocab,
            });
        }
        let row = token as usize;
        out.extend_from_slice(&table.data[row * hidden..(row + 1) * hidden]);
    }
    Ok(out)
}

fn concat(args: &[&Array], axis: usize, shape: &Shape) -> Vec<f32> {
    // Interleave chunks: for each index of the axes before `axis`, each operand contributes a
    // contiguous block of (its axis length × inner size) elements.
    let outer: usize = shape.0[..axis].iter().product();
    let inner: usize = shape.0[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(shape.numel());
    for o in 0..outer {
        for a in args {
            let block = a.shape.0[axis] * inner;
            out.extend_from_slice(&a.data[o * block..(o + 1) * block]);
        }
    }
    out
}

fn binary(args: &[&Array], shape: &Shape, f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    let (a, b) = (args[0], args[1]);
    if a.shape == *shape && b.shape == *shape {
        return a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect();
    }
    let a = gather(&a.data, shape.dims(), &broadcast_strides(&a.shape, shape), 0);
    let b = gather(&b.data, shape.dims(), &broadcast_strides(&b.shape, shape), 0);
    a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect()
}
