//! RAII over cuBLASLt's three descriptor kinds — the matmul operation, a matrix layout, and the
//! algorithm-search preference — with typed attribute setters. Each failing call becomes a
//! [`CublasLtError`] naming the function, the attribute, its size in bytes and the GEMM it is for.
//!
//! cuBLASLt reads every attribute through `(const void* buf, size_t size)` and insists on the
//! exact C type's size (`FAST_ACCUM` is an `int8_t`, `TRANSA` an `int32_t`, a scale pointer a
//! `void*`): the [`AttrValue`] types make the size follow from the Rust type at the call site.

use cudarc::cublaslt::sys::{
    cublasComputeType_t, cublasLtMatmulDescAttributes_t as DescAttr, cublasLtMatmulDesc_t,
    cublasLtMatmulPreferenceAttributes_t as PrefAttr, cublasLtMatmulPreference_t, cublasLtMatrixLayout_t,
    cudaDataType_t,
};

use super::error::CublasLtError;
use super::library::Library;

/// The C scalar types cuBLASLt attributes hold (device pointers are `u64`).
///
/// # Safety
/// `Self` must be a plain C integer type, so that its bytes are the attribute's value.
pub(crate) unsafe trait AttrValue: Copy {}
// SAFETY: plain integers.
unsafe impl AttrValue for i8 {}
// SAFETY: as above.
unsafe impl AttrValue for i32 {}
// SAFETY: as above.
unsafe impl AttrValue for u64 {}

fn size_text<T>() -> String {
    match std::mem::size_of::<T>() {
        1 => "1 byte".into(),
        n => format!("{n} bytes"),
    }
}

/// A matmul operation descriptor: compute and scale types, transposes, scale pointers, fast
/// accumulation.
pub(crate) struct MatmulDesc {
    raw: cublasLtMatmulDesc_t,
    lib: &'static Library,
    label: String,
}

// SAFETY: a heap object with no thread affinity; mutation takes `&mut self`, and cuBLASLt only
// reads the descriptor during `cublasLtMatmul`, which lancet calls with the descriptor locked.
unsafe impl Send for MatmulDesc {}
// SAFETY: see `Send`.
unsafe impl Sync for MatmulDesc {}

impl MatmulDesc {
    pub fn new(
        lib: &'static Library,
        compute: cublasComputeType_t,
        scale: cudaDataType_t,
        label: impl Into<String>,
    ) -> Result<Self, CublasLtError> {
        let label = label.into();
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; enums are passed as their C values.
        let status = unsafe { (lib.api.desc_create)(&mut raw, compute as u32, scale as u32) };
        lib.check(status, || {
            format!("cublasLtMatmulDescCreate({compute:?}, {scale:?}) for {label}")
        })?;
        Ok(MatmulDesc { raw, lib, label })
    }

    pub fn raw(&self) -> cublasLtMatmulDesc_t {
        self.raw
    }

    pub fn set<T: AttrValue>(&mut self, attr: DescAttr, value: T) -> Result<(), CublasLtError> {
        let size = std::mem::size_of::<T>();
        // SAFETY: `value` is a live C scalar of `size` bytes; cuBLASLt copies it before returning.
        let status =
            unsafe { (self.lib.api.desc_set)(self.raw, attr as u32, (&value as *const T).cast(), size) };
        self.lib.check(status, || {
            format!(
                "cublasLtMatmulDescSetAttribute({attr:?}, {}) for {}",
                size_text::<T>(),
                self.label
            )
        })
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by `cublasLtMatmulDescCreate`, destroyed once. A failure (only for an
        // invalid pointer, which cannot happen) has no one to report to.
        unsafe { (self.lib.api.desc_destroy)(self.raw) };
    }
}

/// A column-major matrix layout: element type, rows, columns and leading dimension.
pub(crate) struct MatrixLayout {
    raw: cublasLtMatrixLayout_t,
    lib: &'static Library,
}

// SAFETY: an immutable heap object after creation, with no thread affinity.
unsafe impl Send for MatrixLayout {}
// SAFETY: see `Send`.
unsafe impl Sync for MatrixLayout {}

impl MatrixLayout {
    /// `label` names the operand in errors (e.g. "A (w) of fp8 …").
    pub fn new(
        lib: &'static Library,
        dtype: cudaDataType_t,
        rows: usize,
        cols: usize,
        ld: usize,
        label: &str,
    ) -> Result<Self, CublasLtError> {
        let mut raw = std::ptr::null_mut();
        // Sizes were validated to fit in `i32` (`GemmSpec::validate`), so these never truncate.
        let (r, c, l) = (rows as u64, cols as u64, ld as i64);
        // SAFETY: `raw` is a valid out-pointer.
        let status = unsafe { (lib.api.layout_create)(&mut raw, dtype as u32, r, c, l) };
        lib.check(status, || {
            format!("cublasLtMatrixLayoutCreate({dtype:?}, rows {rows}, cols {cols}, ld {ld}) for {label}")
        })?;
        Ok(MatrixLayout { raw, lib })
    }

    pub fn raw(&self) -> cublasLtMatrixLayout_t {
        self.raw
    }
}

impl Drop for MatrixLayout {
    fn drop(&mut self) {
        // SAFETY: created by `cublasLtMatrixLayoutCreate`, destroyed once.
        unsafe { (self.lib.api.layout_destroy)(self.raw) };
    }
}

/// What the algorithm heuristic may choose from (lancet sets only the workspace limit: the
/// default is no workspace at all).
pub(crate) struct Preference {
    raw: cublasLtMatmulPreference_t,
    lib: &'static Library,
}

impl Preference {
    pub fn new(lib: &'static Library) -> Result<Self, CublasLtError> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer.
        let status = unsafe { (lib.api.pref_create)(&mut raw) };
        lib.check(status, || "cublasLtMatmulPreferenceCreate".into())?;
        Ok(Preference { raw, lib })
    }

    pub fn raw(&self) -> cublasLtMatmulPreference_t {
        self.raw
    }

    pub fn set<T: AttrValue>(&mut self, attr: PrefAttr, value: T) -> Result<(), CublasLtError> {
        let size = std::mem::size_of::<T>();
        // SAFETY: as `MatmulDesc::set`.
        let status =
            unsafe { (self.lib.api.pref_set)(self.raw, attr as u32, (&value as *const T).cast(), size) };
        self.lib.check(status, || {
            format!(
                "cublasLtMatmulPreferenceSetAttribute({attr:?}, {})",
                size_text::<T>()
            )
        })
    }
}

impl Drop for Preference {
    fn drop(&mut self) {
        // SAFETY: created by `cublasLtMatmulPreferenceCreate`, destroyed once.
        unsafe { (self.lib.api.pref_destroy)(self.raw) };
    }
}
