//! Fusion into generated kernels: any connected region of elementwise ops, RoPE and norms
//! becomes one kernel, whatever the architecture.
//!
//! Two rules do all of it. `seed-kernel` wraps a single fusible op as a one-instruction kernel
//! (a distinct node kind, so no rule's output can match its own input again). `grow-kernel`
//! lets a kernel swallow the kernels producing its arguments, but only a producer with exactly
//! one consumer (otherwise its value must be materialised anyway, and fusing would compute it
//! twice) and only the largest kernel in that producer's class (so a region replaces its
//! prefixes instead of multiplying partial chains). Norm + FP8 quantize, SwiGLU + quantize,
//! RoPE on a view of the QKV projection, and chains nobody wrote a rule for all come out of
//! these two.

use egg::Id;

use crate::ir::{Instr, Op, Operand, Origin, Program};
use crate::rewrite::analysis::Graph;
use crate::rewrite::lang::ENode;
use crate::rewrite::rule::{below, sole_consumer, Proposal, Rule};

/// The most instructions one kernel may hold: far above what transformer glue needs, low
/// enough that a pathological graph cannot grow unbounded programs.
pub const MAX_INSTRS: usize = 32;

pub static RULES: &[Rule] = &[
    Rule {
        name: "seed-kernel",
        family: "kernel",
        why: "every fusible op is also a one-instruction kernel, which grow-kernel can extend",
        propose: seed,
    },
    Rule {
        name: "grow-kernel",
        family: "kernel",
        why: "a kernel that computes its single-consumer producers itself saves their launches and \
              the round trip of their results through device memory",
        propose: grow,
    },
];

fn origin(egraph: &Graph, id: Id, op: &Op) -> Origin {
    Origin(
        egraph[id]
            .data
            .names
            .iter()
            .next()
            .cloned()
            .unwrap_or_else(|| op.kind().to_string()),
    )
}

fn seed(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        if !node.op.is_fusible() {
            continue;
        }
        let mut args: Vec<Id> = Vec::new();
        let operands = node
            .children
            .iter()
            .map(|&c| Operand::Arg(arg_index(&mut args, egraph.find(c))))
            .collect();
        let program = Program {
            instrs: vec![Instr {
                op: node.op.clone(),
                operands,
                origin: origin(egraph, id, &node.op),
            }],
        };
        let node = ENode::new(Op::Fused { program }, args);
        if below(egraph, &node, id) {
            out.push(Proposal::Node(node));
        }
    }
    out
}

/// The position of `class` in `args`, appending it if new: a kernel reads each tensor once.
fn arg_index(args: &mut Vec<Id>, class: Id) -> u16 {
    match args.iter().position(|&a| a == class) {
        Some(i) => i as u16,
        None => {
            args.push(class);
            (args.len() - 1) as u16
        }
    }
}

fn program(node: &ENode) -> Option<&Program> {
    match &node.op {
        Op::Fused { program } => Some(program),
        _ => None,
    }
}

fn row_reductions(p: &Program) -> usize {
    p.instrs.iter().filter(|i| i.op.is_row_reduction()).count()
}

/// Whether every use of `Arg(arg)` in `p` may be replaced by a computed value: RoPE, norms and
/// FP8 scales read their operand from memory (RoPE at a partner index, norms a whole row).
fn computable_arg(p: &Program, arg: u16) -> bool {
    p.instrs.iter().all(|instr| {
        instr.operands.iter().enumerate().all(|(slot, &o)| {
            o != Operand::Arg(arg)
                || match instr.op {
                    Op::Rope { .. } | Op::RmsNorm { .. } | Op::LayerNorm { .. } => false,
                    Op::Quantize { .. } | Op::Dequantize { .. } => slot == 0,
                    _ => true,
                }
        })
    })
}

/// The kernel in class `id` that a consumer in class `consumer` should absorb: the largest (ties
/// broken by program order, for determinism), never one that reads the consumer itself.
fn largest_kernel(egraph: &Graph, id: Id, consumer: Id) -> Option<&ENode> {
    egraph[id]
        .nodes
        .iter()
        .filter(|n| program(n).is_some() && below(egraph, n, consumer))
        .max_by(|a, b| {
            let (pa, pb) = (program(a).unwrap(), program(b).unwrap());
            pa.instrs.len().cmp(&pb.instrs.len()).then(pb.cmp(pa))
        })
}

fn grow(egraph: &Graph, id: Id) -> Vec<Proposal> {
    let shape = &egraph[id].data.ty.shape;
    let mut out = Vec::new();
    for node in &egraph[id].nodes {
        let Some(consumer) = program(node) else { continue };
        let mut reductions = row_reductions(consumer);
        let mut size = consumer.instrs.len();
        // For each argument, the producer kernel to inline, if it may be.
        let producers: Vec<Option<&ENode>> = node
            .children
            .iter()
            .enumerate()
            .map(|(i, &child)| {
                let child = egraph.find(child);
                if child == id
                    || sole_consumer(egraph, child).is_none()
                    || egraph[child].data.ty.shape != *shape
                {
                    return None;
                }
                let producer_node = largest_kernel(egraph, child, id)?;
                let producer = program(producer_node).expect("kernels have programs");
                let fits = computable_arg(consumer, i as u16)
                    && reductions + row_reductions(producer) <= 1
                    && size + producer.instrs.len() <= MAX_INSTRS;
                fits.then(|| {
                    reductions += row_reductions(producer);
                    size += producer.instrs.len();
                    producer_node
                })
            })
            .collect();
        if producers.iter().all(Option::is_none) {
            continue;
        }
        // Inline the producers first, then the consumer with its arguments remapped.
        let mut args: Vec<Id> = Vec::new();
        let mut instrs: Vec<Instr> = Vec::new();
        let remap: Vec<Operand> = node
            .children
            .iter()
            .zip(&producers)
            .map(|(&child, producer)| match *producer {
                None => Operand::Arg(arg_index(&mut args, egraph.find(child))),
                Some(child_node) => {
                    let p = program(child_node).expect("kernels have programs");
                    let base = instrs.len() as u16;
                    for instr in &p.instrs {
                        let operands = instr
                            .operands
                            .iter()
                            .map(|&o| match o {
                                Operand::Arg(a) => Operand::Arg(arg_index(
                                    &mut args,
                                    egraph.find(child_node.children[a as usize]),
                                )),
                                Operand::Instr(j) => Operand::Instr(base + j),
                            })
                            .collect();
                        instrs.push(Instr {
                            operands,
                            ..instr.clone()
                        });
                    }
                    Operand::Instr(instrs.len() as u16 - 1)
                }
            })
            .collect();
        let base = instrs.len() as u16;
        for instr in &consumer.instrs {
            let operands = instr
                .operands
                .iter()
                .map(|&o| match o {
                    Operand::Arg(a) => remap[a as usize],
                    Operand::Instr(j) => Operand::Instr(base + j),
                })
                .collect();
            instrs.push(Instr {
                operands,
                ..instr.clone()
            });
        }
        out.push(Proposal::Node(ENode::new(
            Op::Fused {
                program: Program { instrs },
            },
            args,
        )));
    }
    out
}
