//! What one attention call computes and how its tensors sit in memory, validated before any
//! cuDNN call so that a bad shape fails with a message about the shape, not a cuDNN status.

use std::fmt;

use thiserror::Error;

/// Element strides of a `[batch, heads, seq, head_dim]` view, in elements.
pub type Strides = [usize; 4];

const AXES: [&str; 4] = ["batch", "heads", "seq", "head_dim"];

/// Sizes of a self-attention call (queries and keys come from the same tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionShape {
    pub batch: usize,
    pub q_heads: usize,
    /// Fewer than `q_heads` for grouped-query attention: query head `h` reads KV head
    /// `h / (q_heads / kv_heads)`, with no copy (cuDNN broadcasts).
    pub kv_heads: usize,
    pub seq_len: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    /// Elements per token of a packed QKV buffer `[batch, seq, (q_heads + 2·kv_heads)·head_dim]`.
    pub fn packed_width(&self) -> usize {
        (self.q_heads + 2 * self.kv_heads) * self.head_dim
    }

    /// Where K and V start inside a packed QKV buffer, in elements (Q starts at 0).
    pub fn packed_offsets(&self) -> (usize, usize) {
        let k = self.q_heads * self.head_dim;
        (k, k + self.kv_heads * self.head_dim)
    }

    fn dims(&self, tensor: Tensor) -> [usize; 4] {
        let heads = match tensor {
            Tensor::Q | Tensor::O => self.q_heads,
            Tensor::K | Tensor::V => self.kv_heads,
        };
        [self.batch, heads, self.seq_len, self.head_dim]
    }
}

/// The strides of Q, K, V and O. Dims are always `[batch, heads, seq, head_dim]`; the memory
/// layout lives entirely in the strides, which is how Q, K and V can be views of one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionLayout {
    pub q: Strides,
    pub k: Strides,
    pub v: Strides,
    pub o: Strides,
}

impl AttentionLayout {
    /// Every tensor dense in `[batch, heads, seq, head_dim]` order.
    pub fn contiguous(shape: &AttentionShape) -> Self {
        let dense = |heads: usize| {
            let (s, d) = (shape.seq_len, shape.head_dim);
            [heads * s * d, s * d, d, 1]
        };
        AttentionLayout {
            q: dense(shape.q_heads),
            k: dense(shape.kv_heads),
            v: dense(shape.kv_heads),
            o: dense(shape.q_heads),
        }
    }

    /// Q, K and V as views of the QKV projection's output `[batch, seq, (Hq + 2·Hkv)·D]` (starting
    /// at [`AttentionShape::packed_offsets`]), and O written `[batch, seq, Hq·D]`, the row-major
    /// input the output projection wants: no split, transpose or copy on either side.
    pub fn packed_qkv(shape: &AttentionShape) -> Self {
        let (s, d) = (shape.seq_len, shape.head_dim);
        let w = shape.packed_width();
        let packed = [s * w, d, w, 1];
        let o_width = shape.q_heads * d;
        AttentionLayout {
            q: packed,
            k: packed,
            v: packed,
            o: [s * o_width, d, o_width, 1],
        }
    }
}

/// One of the four tensors of an attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tensor {
    Q,
    K,
    V,
    O,
}

impl Tensor {
    pub const ALL: [Tensor; 4] = [Tensor::Q, Tensor::K, Tensor::V, Tensor::O];

    pub fn name(self) -> &'static str {
        match self {
            Tensor::Q => "Q",
            Tensor::K => "K",
            Tensor::V => "V",
            Tensor::O => "O",
        }
    }
}

/// The element type of Q, K, V and O. The softmax and both products accumulate in f32 either
/// way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionPrecision {
    /// bf16 Q, K, V and O; the softmax output P is rounded to bf16 before `P·V`.
    Bf16,
    /// e4m3 Q, K, V and O with per-tensor f32 scale factors read from device memory at each
    /// call (so scales change without a new plan), and the amaxes of P and O written back for
    /// the next scales. P is quantized to e4m3 too. On Hopper cuDNN writes O only in FP8.
    Fp8,
}

impl AttentionPrecision {
    pub fn element_bytes(self) -> usize {
        match self {
            AttentionPrecision::Bf16 => 2,
            AttentionPrecision::Fp8 => 1,
        }
    }

    /// Strides (and head_dim) must be multiples of this many elements: Hopper's tensor-memory
    /// loads need every non-unit stride to be a multiple of 16 bytes.
    pub fn stride_multiple(self) -> usize {
        16 / self.element_bytes()
    }

    pub fn name(self) -> &'static str {
        match self {
            AttentionPrecision::Bf16 => "bf16",
            AttentionPrecision::Fp8 => "fp8",
        }
    }
}

impl fmt::Display for AttentionPrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything an attention plan depends on: one plan serves every call with an equal spec
/// (all layers of a model share one). The softmax scale is not part of it, nor are FP8 scale
/// factors: cuDNN reads them at each execution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttentionSpec {
    pub shape: AttentionShape,
    pub layout: AttentionLayout,
    /// Query `i` sees keys `j <= i` (top-left aligned, as PyTorch's `is_causal`). The only mask
    /// there is, which matters for FP8: on Hopper cuDNN has no bottom-right causal FP8 kernel.
    pub causal: bool,
    pub precision: AttentionPrecision,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("attention: {what} is 0")]
    Empty { what: &'static str },
    #[error("attention: {q_heads} query heads cannot share {kv_heads} KV heads evenly")]
    HeadGroups { q_heads: usize, kv_heads: usize },
    #[error(
        "attention: head_dim {head_dim} is not a multiple of {multiple}; cuDNN's {precision} kernels \
         load 16-byte rows"
    )]
    HeadDim {
        head_dim: usize,
        multiple: usize,
        precision: AttentionPrecision,
    },
    #[error("attention: {tensor}'s head_dim stride is {stride}; cuDNN needs 1 (contiguous rows)")]
    InnerStride { tensor: &'static str, stride: usize },
    #[error(
        "attention: {tensor}'s {axis} stride {stride} is not a multiple of {multiple} {precision} \
         elements (16 bytes), which cuDNN's tensor-memory loads need"
    )]
    Misaligned {
        tensor: &'static str,
        axis: &'static str,
        stride: usize,
        multiple: usize,
        precision: AttentionPrecision,
    },
    #[error("attention: O's strides {strides:?} make different elements share an address")]
    OverlappingOutput { strides: Strides },
    #[error("attention: {tensor} spans more elements than cuDNN's 64-bit sizes can describe")]
    TooLarge { tensor: &'static str },
}

impl AttentionSpec {
    pub fn strides(&self, tensor: Tensor) -> Strides {
        match tensor {
            Tensor::Q => self.layout.q,
            Tensor::K => self.layout.k,
            Tensor::V => self.layout.v,
            Tensor::O => self.layout.o,
        }
    }

    pub fn dims(&self, tensor: Tensor) -> [usize; 4] {
        self.shape.dims(tensor)
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let s = &self.shape;
        let sizes = [
            ("batch", s.batch),
            ("q_heads", s.q_heads),
            ("kv_heads", s.kv_heads),
            ("seq_len", s.seq_len),
            ("head_dim", s.head_dim),
        ];
        if let Some(&(what, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return Err(SpecError::Empty { what });
        }
        if s.q_heads % s.kv_heads != 0 {
            return Err(SpecError::HeadGroups {
                q_heads: s.q_heads,
                kv_heads: s.kv_heads,
            });
        }
        let (precision, multiple) = (self.precision, self.precision.stride_multiple());
        if s.head_dim % multiple != 0 {
            return Err(SpecError::HeadDim {
                head_dim: s.head_dim,
                multiple,
                precision,
            });
        }
        // The fused kernel's virtual score matrix [batch, q_heads, seq, seq] must fit too.
        let scores = [s.batch, s.q_heads, s.seq_len, s.seq_len]
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d));
        if scores.is_none_or(|n| n > i64::MAX as usize) {
            return Err(SpecError::TooLarge {
                tensor: "the score matrix",
            });
        }
        for tensor in Tensor::ALL {
            let strides = self.strides(tensor);
            let name = tensor.name();
            if strides[3] != 1 {
                return Err(SpecError::InnerStride {
                    tensor: name,
                    stride: strides[3],
                });
            }
            if let Some(axis) = (0..3).find(|&a| strides[a] % multiple != 0) {
                return Err(SpecError::Misaligned {
                    tensor: name,
                    axis: AXES[axis],
                    stride: strides[axis],
                    multiple,
                    precision,
                });
            }
            if self.extent(tensor).is_none_or(|n| n > i64::MAX as usize) {
                return Err(SpecError::TooLarge { tensor: name });
            }
        }
        if !distinct_addresses(self.dims(Tensor::O), self.layout.o) {
            return Err(SpecError::OverlappingOutput {
                strides: self.layout.o,
            });
        }
        Ok(())
    }

    /// How many elements a buffer must hold, from the view's first element: one past the
    /// largest offset, `1 + Σ (dim − 1)·stride`. `None` on overflow.
    pub fn extent(&self, tensor: Tensor) -> Option<usize> {
        extent(self.dims(tensor), self.strides(tensor))
    }

    /// Floating-point operations of the two matrix products, the usual attention FLOP count
    /// (`4·B·Hq·S²·D`), halved for causal attention, which skips the masked half.
    pub fn flops(&self) -> f64 {
        let s = &self.shape;
        let full = 4.0 * (s.batch * s.q_heads) as f64 * (s.seq_len as f64).powi(2) * s.head_dim as f64;
        if self.causal {
            full / 2.0
        } else {
            full
        }
    }
}

impl fmt::Display for AttentionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shape;
        write!(
            f,
            "attention b={} hq={} hkv={} s={} d={}{}{}",
            s.batch,
            s.q_heads,
            s.kv_heads,
            s.seq_len,
            s.head_dim,
            if self.causal { " causal" } else { "" },
            match self.precision {
                AttentionPrecision::Bf16 => "",
                AttentionPrecision::Fp8 => " fp8",
            }
        )
    }
}

fn extent(dims: [usize; 4], strides: Strides) -> Option<usize> {
    dims.iter().zip(strides).try_fold(1usize, |n, (&d, s)| {
        n.checked_add(d.checked_sub(1)?.checked_mul(s)?)
    })
}

/// Whether a view maps distinct indices to distinct addresses: taking the axes from the
/// smallest stride up, each stride must clear everything the smaller axes can reach.
fn distinct_addresses(dims: [usize; 4], strides: Strides) -> bool {
    let mut axes: Vec<_> = (0..4).filter(|&a| dims[a] > 1).collect();
    axes.sort_by_key(|&a| strides[a]);
    let mut reach = 1usize;
    for a in axes {
        if strides[a] < reach {
            return false;
        }
        reach += strides[a] * (dims[a] - 1);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headline() -> AttentionShape {
        AttentionShape {
            batch: 2,
            q_heads: 32,
            kv_heads: 8,
            seq_len: 2048,
            head_dim: 64,
        }
    }

    fn spec(shape: AttentionShape, layout: AttentionLayout) -> AttentionSpec {
        AttentionSpec {
            shape,
            layout,
            causal: true,
            precision: AttentionPrecision::Bf16,
        }
    }

    fn fp8(spec: AttentionSpec) -> AttentionSpec {
        AttentionSpec {
            precision: AttentionPrecision::Fp8,
            ..spec
        }
    }

    #[test]
    fn packed_layout_matches_the_recorded_cudnn_graph() {
        // Strides cuDNN's frontend passed for PyTorch's packed-QKV call on the H100.
        let layout = AttentionLayout::packed_qkv(&headline());
        assert_eq!(layout.q, [6291456, 64, 3072, 1]);
        assert_eq!(layout.v, [6291456, 64, 3072, 1]);
        assert_eq!(layout.o, [4194304, 64, 2048, 1]);
        assert_eq!(headline().packed_offsets(), (2048, 2560));
        let d128 = AttentionShape {
            head_dim: 128,
            ..headline()
        };
        assert_eq!(d128.packed_width(), 6144);
        assert_eq!(d128.packed_offsets(), (4096, 5120));
    }

    #[test]
    fn extents_fit_inside_the_packed_buffer() {
        let shape = headline();
        let spec = spec(shape, AttentionLayout::packed_qkv(&shape));
        let total = shape.batch * shape.seq_len * shape.packed_width();
        let (k, v) = shape.packed_offsets();
        assert_eq!(
            k + spec.extent(Tensor::K).unwrap(),
            total - shape.kv_heads * shape.head_dim
        );
        assert_eq!(v + spec.extent(Tensor::V).unwrap(), total);
        assert_eq!(spec.extent(Tensor::O), Some(2 * 2048 * 32 * 64));
        assert_eq!(spec.extent(Tensor::Q), Some(total - 2 * 8 * 64));
    }

    #[test]
    fn both_layouts_validate() {
        for seq_len in [1, 17, 128, 2048] {
            for (q_heads, kv_heads) in [(32, 8), (32, 4), (8, 8)] {
                let shape = AttentionShape {
                    seq_len,
                    q_heads,
                    kv_heads,
                    ..headline()
                };
                assert_eq!(
                    spec(shape, AttentionLayout::packed_qkv(&shape)).validate(),
                    Ok(())
                );
                assert_eq!(
                    spec(shape, AttentionLayout::contiguous(&shape)).validate(),
                    Ok(())
                );
                for head_dim in [64, 128] {
                    let shape = AttentionShape { head_dim, ..shape };
                    for layout in [
                        AttentionLayout::packed_qkv(&shape),
                        AttentionLayout::contiguous(&shape),
                    ] {
                        assert_eq!(fp8(spec(shape, layout)).validate(), Ok(()));
                    }
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused_with_the_reason() {
        let shape = headline();
        let ok = spec(shape, AttentionLayout::packed_qkv(&shape));
        let with_shape = |f: fn(&mut AttentionShape)| {
            let mut s = ok;
            f(&mut s.shape);
            s.validate()
        };
        assert_eq!(
            with_shape(|s| s.seq_len = 0),
            Err(SpecError::Empty { what: "seq_len" })
        );
        assert_eq!(
            with_shape(|s| s.kv_heads = 5),
            Err(SpecError::HeadGroups {
                q_heads: 32,
                kv_heads: 5
            })
        );
        assert_eq!(
            with_shape(|s| s.head_dim = 60),
            Err(SpecError::HeadDim {
                head_dim: 60,
                multiple: 8,
                precision: AttentionPrecision::Bf16
            })
        );
        assert_eq!(
            with_shape(|s| s.seq_len = 1 << 40),
            Err(SpecError::TooLarge {
                tensor: "the score matrix"
            })
        );

        let mut transposed = ok;
        transposed.layout.k = [6291456, 64, 1, 3072];
        assert_eq!(
            transposed.validate(),
            Err(SpecError::InnerStride {
                tensor: "K",
                stride: 3072
            })
        );
        let mut odd = ok;
        odd.layout.v[2] = 3076;
        let err = odd.validate().unwrap_err();
        assert_eq!(
            err,
            SpecError::Misaligned {
                tensor: "V",
                axis: "seq",
                stride: 3076,
                multiple: 8,
                precision: AttentionPrecision::Bf16
            }
        );
        assert!(err.to_string().contains("16 bytes"));
        let mut overlapping = ok;
        overlapping.layout.o = [4194304, 8, 2048, 1];
        assert!(matches!(
            overlapping.validate(),
            Err(SpecError::OverlappingOutput { .. })
        ));
    }

    #[test]
    fn fp8_needs_16_element_rows_and_strides() {
        // Shapes and strides bf16 accepts (multiples of 8 elements = 16 bytes) that FP8 does
        // not (8 e4m3 elements are 8 bytes).
        let shape = AttentionShape {
            head_dim: 72,
            ..headline()
        };
        let err = fp8(spec(shape, AttentionLayout::contiguous(&shape)))
            .validate()
            .unwrap_err();
        assert_eq!(
            err,
            SpecError::HeadDim {
                head_dim: 72,
                multiple: 16,
                precision: AttentionPrecision::Fp8
            }
        );
        assert!(
            err.to_string().contains("multiple of 16; cuDNN's fp8 kernels"),
            "{err}"
        );
        assert_eq!(
            spec(shape, AttentionLayout::contiguous(&shape)).validate(),
            Ok(())
        );

        let shape = headline();
        let mut padded = fp8(spec(shape, AttentionLayout::packed_qkv(&shape)));
        padded.layout.o[2] = 2048 + 8;
        padded.layout.o[0] = 2048 * 2056;
        let err = padded.validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("O's seq stride 2056 is not a multiple of 16 fp8 elements (16 bytes)"),
            "{err}"
        );
        padded.precision = AttentionPrecision::Bf16;
        assert_eq!(padded.validate(), Ok(()));
    }

    #[test]
    fn display_names_fp8() {
        let shape = headline();
        let bf16 = spec(shape, AttentionLayout::packed_qkv(&shape));
        assert_eq!(bf16.to_string(), "attention b=2 hq=32 hkv=8 s=2048 d=64 causal");
        assert_eq!(
            fp8(bf16).to_string(),
            "attention b=2 hq=32 hkv=8 s=2048 d=64 causal fp8"
        );
    }

    #[test]
    fn distinct_addresses_accepts_permutations_and_size_one_axes() {
        assert!(distinct_addresses([2, 32, 2048, 64], [4194304, 64, 2048, 1]));
        assert!(distinct_addresses([1, 1, 1, 64], [0, 0, 0, 1]));
        assert!(!distinct_addresses([2, 4, 8, 64], [2048, 64, 64, 1]));
    }

    #[test]
    fn causal_flops_are_half() {
        let shape = headline();
        let mut s = spec(shape, AttentionLayout::packed_qkv(&shape));
        assert_eq!(s.flops(), 4.0 * 64.0 * 2048.0 * 2048.0 * 64.0 / 2.0);
        s.causal = false;
        assert_eq!(s.flops(), 4.0 * 64.0 * 2048.0 * 2048.0 * 64.0);
    }
}
