//! Strided views of buffers: how lowering makes reshapes, permutes and slices free.

use serde::Serialize;

use crate::ir::DType;

/// Index of a buffer in its plan.
pub type BufferId = usize;

/// A tensor as a strided window on a buffer: element `i` (a multi-index over `shape`) lives at
/// `offset + Σ iₐ·strides[a]` elements from the buffer's start. Broadcast axes have stride 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct View {
    pub buffer: BufferId,
    pub dtype: DType,
    pub offset: usize,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
}

impl View {
    /// The whole of `buffer`, row-major.
    pub fn contiguous(buffer: BufferId, dtype: DType, shape: &[usize]) -> Self {
        View {
            buffer,
            dtype,
            offset: 0,
            shape: shape.to_vec(),
            strides: crate::ir::Shape::new(shape).strides(),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1;
        for (&d, &s) in self.shape.iter().zip(&self.strides).rev() {
            if d != 1 && s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// Elements `start..end` of `axis`.
    pub fn slice(&self, axis: usize, start: usize, end: usize) -> View {
        let mut v = self.clone();
        v.offset += start * self.strides[axis];
        v.shape[axis] = end - start;
        v
    }

    /// Output axis `i` is this view's axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> View {
        View {
            shape: perm.iter().map(|&a| self.shape[a]).collect(),
            strides: perm.iter().map(|&a| self.strides[a]).collect(),
            ..self.clone()
        }
    }

    /// The same elements in `shape`, if strides can express it without a copy: every group of
    /// old axes that the new shape merges or splits must be contiguous within itself (NumPy's
    /// no-copy reshape rule).
    pub fn reshape(&self, shape: &[usize]) -> Option<View> {
        if shape.iter().product::<usize>() != self.numel() {
            return None;
        }
        // Size-1 axes constrain nothing.
        let (od, os): (Vec<usize>, Vec<usize>) = self
            .shape
            .iter()
            .zip(&self.strides)
            .filter(|(&d, _)| d != 1)
            .map(|(&d, &s)| (d, s))
            .unzip();
        let mut strides = vec![0usize; shape.len()];
        let (mut oi, mut oj, mut ni, mut nj) = (0, 1, 0, 1);
        while ni < shape.len() && oi < od.len() {
            let (mut np, mut op) = (shape[ni], od[oi]);
            while np != op {
                if np < op {
                    np *= shape[nj];
                    nj += 1;
                } else {
                    op *= od[oj];
                    oj += 1;
                }
            }
            if (oi..oj - 1).any(|k| os[k] != od[k + 1] * os[k + 1]) {
                return None;
            }
            strides[nj - 1] = os[oj - 1];
            for k in (ni + 1..nj).rev() {
                strides[k - 1] = strides[k] * shape[k];
            }
            ni = nj;
            nj += 1;
            oi = oj;
            oj += 1;
        }
        Some(View {
            shape: shape.to_vec(),
            strides,
            ..self.clone()
        })
    }

    /// As a row-major matrix `[rows, cols]` with rows `ld` elements apart (what a GEMM operand
    /// needs), if the view has unit stride along its last axis and its leading axes collapse.
    pub fn as_matrix(&self) -> Option<(usize, usize, usize)> {
        let cols = *self.shape.last()?;
        if self.strides.last() != Some(&1) && cols != 1 {
            return None;
        }
        let rows: usize = self.shape[..self.shape.len() - 1].iter().product();
        let lead = View {
            shape: self.shape[..self.shape.len() - 1].to_vec(),
            strides: self.strides[..self.strides.len() - 1].to_vec(),
            ..self.clone()
        }
        .reshape(&[rows])?;
        let ld = if rows == 1 { cols } else { lead.strides[0] };
        (ld >= cols).then_some((rows, cols, ld))
    }

    /// Reads broadcast to `shape` (NumPy rules): new leading axes and size-1 axes get stride 0.
    pub fn broadcast_to(&self, shape: &[usize]) -> View {
        let pad = shape.len() - self.shape.len();
        let strides = (0..shape.len())
            .map(|a| {
                if a < pad || self.shape[a - pad] == 1 {
                    0
                } else {
                    self.strides[a - pad]
                }
            })
            .collect();
        View {
            shape: shape.to_vec(),
            strides,
            ..self.clone()
        }
    }
}
