//! Fused-kernel programs: the straight-line code of a kernel that rewriting made from several ops.
//!
//! A program is a list of instructions, each an ordinary IR op over the kernel's arguments and
//! earlier instructions; its result is the last instruction. Reusing [`Op`] means a fused kernel
//! has exactly the semantics of the ops it replaced — the reference interpreter evaluates it
//! instruction by instruction, with the same roundings — and codegen needs one rule per op.

use std::fmt;
use std::hash::{Hash, Hasher};

use serde::{Deserialize, Serialize};

use super::{infer, Mismatch, Op, TensorType};

/// Where an instruction reads an operand from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operand {
    /// The kernel's `i`-th argument (a tensor in device memory).
    Arg(u16),
    /// The result of the `i`-th instruction.
    Instr(u16),
}

/// Which graph node an instruction came from. Provenance is for people (dumped kernels, DOT
/// labels): it never distinguishes two instructions, so kernels from different layers that do
/// the same thing are the same kernel.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Origin(pub String);

impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Origin {}

impl Hash for Origin {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

impl PartialOrd for Origin {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Origin {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// One step of a fused kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instr {
    pub op: Op,
    pub operands: Vec<Operand>,
    #[serde(default)]
    pub origin: Origin,
}

/// The body of a fused kernel; its result is the last instruction's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Program {
    pub instrs: Vec<Instr>,
}

impl Op {
    /// Ops a fused kernel may contain: elementwise arithmetic, casts and FP8 scaling, RoPE, and
    /// norms (a reduction along the last axis, which the row kernel template provides).
    pub fn is_fusible(&self) -> bool {
        matches!(
            self,
            Op::Add
                | Op::Mul
                | Op::Silu
                | Op::Gelu { .. }
                | Op::Cast { .. }
                | Op::Quantize { .. }
                | Op::Dequantize { .. }
                | Op::Rope { .. }
                | Op::RmsNorm { .. }
                | Op::LayerNorm { .. }
        )
    }

    /// Ops a generated kernel can compute: the fusible ones, and embedding lookups (a gather,
    /// which lowering gives a kernel of its own but rules never fuse: its rows are indexed by
    /// data, not by position).
    pub fn has_kernel(&self) -> bool {
        self.is_fusible() || matches!(self, Op::Embedding)
    }

    /// Ops that reduce along the last axis, so their kernel must see whole rows.
    pub fn is_row_reduction(&self) -> bool {
        matches!(self, Op::RmsNorm { .. } | Op::LayerNorm { .. })
    }
}

impl Program {
    /// The types of every instruction given the argument types, or why the program is invalid.
    pub fn infer(&self, args: &[&TensorType]) -> Result<Vec<TensorType>, Mismatch> {
        if self.instrs.is_empty() {
            return Err(Mismatch::Attribute(
                "a fused program needs at least one instruction".into(),
            ));
        }
        let mut types: Vec<TensorType> = Vec::with_capacity(self.instrs.len());
        for (i, instr) in self.instrs.iter().enumerate() {
            if !instr.op.has_kernel() {
                return Err(Mismatch::Attribute(format!(
                    "instruction {i}: {} cannot be part of a generated kernel",
                    instr.op.kind()
                )));
            }
            let mut operand_types = Vec::with_capacity(instr.operands.len());
            for operand in &instr.operands {
                let ty = match *operand {
                    Operand::Arg(a) => args.get(a as usize).copied(),
                    Operand::Instr(j) if (j as usize) < i => Some(&types[j as usize]),
                    Operand::Instr(_) => None,
                };
                let ty = ty.ok_or_else(|| {
                    Mismatch::Attribute(format!(
                        "instruction {i}: operand {operand} is not an argument or an earlier instruction"
                    ))
                })?;
                operand_types.push(ty);
            }
            let ty = infer::infer(&instr.op, &operand_types)
                .map_err(|m| Mismatch::Attribute(format!("instruction {i} ({}): {m}", instr.op.kind())))?;
            types.push(ty);
        }
        Ok(types)
    }

    /// The names of the graph nodes this program implements, in order, without repeats.
    pub fn origins(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for instr in &self.instrs {
            let name = instr.origin.0.as_str();
            if !name.is_empty() && !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Arg(i) => write!(f, "arg{i}"),
            Operand::Instr(i) => write!(f, "%{i}"),
        }
    }
}

impl fmt::Display for Program {
    /// One line per instruction: `%2 = silu(%0)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, instr) in self.instrs.iter().enumerate() {
            let operands: Vec<String> = instr.operands.iter().map(ToString::to_string).collect();
            writeln!(f, "%{i} = {}({})", instr.op.kind(), operands.join(", "))?;
        }
        Ok(())
    }
}
