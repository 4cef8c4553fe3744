//! Host arrays: f32 data with a shape, and strided gathers for the view ops.

use crate::ir::Shape;

/// A dense row-major f32 array. Values of narrower dtypes are stored already rounded.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Shape,
    pub data: Vec<f32>,
}

impl Array {
    /// An array of `shape` from `data`; `None` when the lengths disagree.
    pub fn new(shape: impl Into<Shape>, data: Vec<f32>) -> Option<Self> {
        let shape = shape.into();
        (shape.numel() == data.len()).then_some(Array { shape, data })
    }

    pub fn zeros(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let data = vec![0.0; shape.numel()];
        Array { shape, data }
    }

    pub fn scalar(value: f32) -> Self {
        Array {
            shape: Shape::scalar(),
            data: vec![value],
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Largest absolute value (0 for an empty array; NaN if any element is NaN).
    pub fn amax(&self) -> f32 {
        self.data.iter().fold(0.0f32, |m, &x| {
            if x.is_nan() || m.is_nan() {
                f32::NAN
            } else {
                m.max(x.abs())
            }
        })
    }
}

/// Relative L2 error `‖got − want‖ / ‖want‖`, accumulated in f64: the accuracy measure used by
/// every numerical check in lancet. NaN anywhere in `got` yields NaN, so unwritten (poisoned)
/// elements fail any tolerance.
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "rel_l2 of arrays of different lengths");
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let d = g as f64 - w as f64;
        num += d * d;
        den += (w as f64) * (w as f64);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// Copies the elements of `src` seen through a strided view into a new dense array:
/// `out[i₀, i₁, …] = src[offset + Σ iₐ · strides[a]]` for `i` over `shape`.
pub fn gather(src: &[f32], shape: &[usize], strides: &[usize], offset: usize) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return out;
    }
    let rank = shape.len();
    if rank == 0 {
        out.push(src[offset]);
        return out;
    }
    // Walk the index odometer; the innermost axis is a tight loop.
    let inner = shape[rank - 1];
    let inner_stride = strides[rank - 1];
    let mut index = vec![0usize; rank - 1];
    let mut base = offset;
    loop {
        if inner_stride == 1 {
            out.extend_from_slice(&src[base..base + inner]);
        } else {
            out.extend((0..inner).map(|i| src[base + i * inner_stride]));
        }
        // Advance the outer axes.
        let mut axis = rank - 1;
        loop {
            if axis == 0 {
                return out;
            }
            axis -= 1;
            index[axis] += 1;
            base += strides[axis];
            if index[axis] < shape[axis] {
                break;
            }
            base -= strides[axis] * shape[axis];
            index[axis] = 0;
        }
    }
}

/// Strides that read an array of `from` shape as if broadcast to `to` (0 on broadcast axes).
pub fn broadcast_strides(from: &Shape, to: &Shape) -> Vec<usize> {
    let strides = from.strides();
    let pad = to.rank() - from.rank();
    (0..to.rank())
        .map(|a| {
            if a < pad || from.0[a - pad] == 1 {
                0
            } else {
                strides[a - pad]
            }
        })
        .collect()
}
