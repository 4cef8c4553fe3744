//! RAII over `cudnnBackendDescriptor_t`: create, set attributes, finalize, read attributes,
//! destroy on drop. Every failing call becomes a [`CudnnError`] that names the descriptor type,
//! the attribute, and the label of the graph element the descriptor stands for.

use std::ffi::c_void;
use std::fmt;

use cudarc::cudnn::sys::{
    cudnnBackendAttributeName_t as Attr, cudnnBackendAttributeType_t as AttrType,
    cudnnBackendDescriptorType_t as Kind, cudnnBackendDescriptor_t, cudnnBackendHeurMode_t, cudnnDataType_t,
    cudnnHandle_t, cudnnPointwiseMode_t, cudnnReduceTensorOp_t,
};

use super::error::CudnnError;
use super::handle::Handle;
use super::library::Library;

/// Rust types whose values cuDNN reads as elements of one attribute type.
///
/// # Safety
/// `TYPE` must be the attribute type whose C element has exactly the size and layout of `Self`.
pub unsafe trait AttrValue: Copy {
    const TYPE: AttrType;
}

/// Attribute element types that cuDNN may also *write*: plain integers, for which every bit
/// pattern is valid. (Enum-typed arrays are read with [`Descriptor::get_codes`] instead, so an
/// enum value newer than cudarc's headers cannot become an invalid Rust enum.)
///
/// # Safety
/// As [`AttrValue`], and every bit pattern must be a valid `Self`.
pub unsafe trait Readable: AttrValue + Default {}

macro_rules! attr_values {
    ($($ty:ty => $variant:ident),* $(,)?) => {
        $(
            // SAFETY: the C element type of this attribute type is `$ty`'s C equivalent.
            unsafe impl AttrValue for $ty {
                const TYPE: AttrType = AttrType::$variant;
            }
        )*
    };
}

attr_values! {
    i64 => CUDNN_TYPE_INT64,
    i32 => CUDNN_TYPE_INT32,
    f32 => CUDNN_TYPE_FLOAT,
    bool => CUDNN_TYPE_BOOLEAN,
    u8 => CUDNN_TYPE_CHAR,
    cudnnDataType_t => CUDNN_TYPE_DATA_TYPE,
    cudnnPointwiseMode_t => CUDNN_TYPE_POINTWISE_MODE,
    cudnnReduceTensorOp_t => CUDNN_TYPE_REDUCTION_OPERATOR_TYPE,
    cudnnBackendHeurMode_t => CUDNN_TYPE_HEUR_MODE,
}

// SAFETY: integers; any bit pattern is a valid value.
unsafe impl Readable for i64 {}
// SAFETY: as above.
unsafe impl Readable for i32 {}
// SAFETY: as above.
unsafe impl Readable for u8 {}

/// One backend descriptor, destroyed when dropped.
pub struct Descriptor {
    raw: cudnnBackendDescriptor_t,
    kind: Kind,
    label: String,
    lib: &'static Library,
}

// SAFETY: a backend descriptor is a heap object with no thread affinity. Mutation (setting
// attributes, finalizing) takes `&mut self`; through `&self` lancet only reads attributes of, or
// executes, finalized descriptors, which cuDNN allows from several threads (its only thread
// restriction is on sharing one *handle* concurrently).
unsafe impl Send for Descriptor {}
// SAFETY: see `Send`.
unsafe impl Sync for Descriptor {}

impl Descriptor {
    /// Creates a descriptor of `kind`; `label` says what it is for in error messages.
    pub fn new(lib: &'static Library, kind: Kind, label: impl Into<String>) -> Result<Self, CudnnError> {
        let label = label.into();
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer.
        let status = unsafe { (lib.api.backend_create)(kind as u32, &mut raw) };
        lib.check(status, || {
            format!("cudnnBackendCreateDescriptor({kind:?}) for `{label}`")
        })?;
        Ok(Descriptor {
            raw,
            kind,
            label,
            lib,
        })
    }

    pub fn raw(&self) -> cudnnBackendDescriptor_t {
        self.raw
    }

    pub fn set<T: AttrValue>(&mut self, attr: Attr, values: &[T]) -> Result<(), CudnnError> {
        // SAFETY: `T::TYPE` matches `T`'s layout; cuDNN copies `values` before returning.
        unsafe { self.set_raw(attr, T::TYPE, values.len(), values.as_ptr().cast()) }
    }

    /// Sets an attribute of type `BACKEND_DESCRIPTOR` (operands, operations, configurations).
    pub fn set_descriptors(&mut self, attr: Attr, values: &[&Descriptor]) -> Result<(), CudnnError> {
        let raw: Vec<_> = values.iter().map(|d| d.raw).collect();
        // SAFETY: an array of live descriptor handles.
        unsafe {
            self.set_raw(
                attr,
                AttrType::CUDNN_TYPE_BACKEND_DESCRIPTOR,
                raw.len(),
                raw.as_ptr().cast(),
            )
        }
    }

    /// Sets an attribute of type `VOID_PTR`. Storing addresses is harmless; executing a
    /// descriptor that holds them is where validity matters (an `unsafe` execute).
    pub fn set_pointers(&mut self, attr: Attr, values: &[*mut c_void]) -> Result<(), CudnnError> {
        // SAFETY: an array of pointer-sized elements, as `VOID_PTR` expects.
        unsafe {
            self.set_raw(
                attr,
                AttrType::CUDNN_TYPE_VOID_PTR,
                values.len(),
                values.as_ptr().cast(),
            )
        }
    }

    pub fn set_handle(&mut self, attr: Attr, handle: &Handle) -> Result<(), CudnnError> {
        let value: cudnnHandle_t = handle.raw();
        // SAFETY: `HANDLE` attributes take a pointer to one `cudnnHandle_t`.
        unsafe {
            self.set_raw(
                attr,
                AttrType::CUDNN_TYPE_HANDLE,
                1,
                (&value as *const cudnnHandle_t).cast(),
            )
        }
    }

    unsafe fn set_raw(
        &mut self,
        attr: Attr,
        ty: AttrType,
        count: usize,
        values: *const c_void,
    ) -> Result<(), CudnnError> {
        let status = (self.lib.api.backend_set)(self.raw, attr as u32, ty as u32, count as i64, values);
        self.lib
            .check(status, || format!("cudnnBackendSetAttribute({attr:?}) on {self}"))
    }

    pub fn finalize(&mut self) -> Result<(), CudnnError> {
        // SAFETY: a live descriptor.
        let status = unsafe { (self.lib.api.backend_finalize)(self.raw) };
        self.lib
            .check(status, || format!("cudnnBackendFinalize on {self}"))
    }

    /// Reads up to `capacity` elements of an attribute.
    pub fn get<T: Readable>(&self, attr: Attr, capacity: usize) -> Result<Vec<T>, CudnnError> {
        let mut out = vec![T::default(); capacity];
        // SAFETY: `out` holds `capacity` elements of the type cuDNN writes; every pattern is valid.
        let n = unsafe { self.get_raw(attr, T::TYPE, capacity, out.as_mut_ptr().cast())? };
        out.truncate(n);
        Ok(out)
    }

    /// The number of elements an attribute holds (a query with no buffer).
    pub fn count(&self, attr: Attr, ty: AttrType) -> Result<usize, CudnnError> {
        // SAFETY: a zero-element request writes only the count.
        unsafe { self.get_raw(attr, ty, 0, std::ptr::null_mut()) }
    }

    /// Reads an enum-typed array (`ty` is e.g. `CUDNN_TYPE_BEHAVIOR_NOTE`) as raw `u32` codes.
    pub fn get_codes(&self, attr: Attr, ty: AttrType, capacity: usize) -> Result<Vec<u32>, CudnnError> {
        let mut out = vec![0u32; capacity];
        // SAFETY: C enums are 4-byte integers; `out` has room for `capacity` of them.
        let n = unsafe { self.get_raw(attr, ty, capacity, out.as_mut_ptr().cast())? };
        out.truncate(n);
        Ok(out)
    }

    /// Reads a `BACKEND_DESCRIPTOR` attribute: cuDNN fills in up to `capacity` descriptors of
    /// `kind` that it requires the caller to create first.
    pub fn get_descriptors(
        &self,
        attr: Attr,
        kind: Kind,
        capacity: usize,
        label: &str,
    ) -> Result<Vec<Descriptor>, CudnnError> {
        let mut out = (0..capacity)
            .map(|i| Descriptor::new(self.lib, kind, format!("{label} {i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut raw: Vec<_> = out.iter().map(|d| d.raw).collect();
        let ty = AttrType::CUDNN_TYPE_BACKEND_DESCRIPTOR;
        // SAFETY: `raw` holds `capacity` created descriptors for cuDNN to fill.
        let n = unsafe { self.get_raw(attr, ty, capacity, raw.as_mut_ptr().cast())? };
        out.truncate(n);
        Ok(out)
    }

    unsafe fn get_raw(
        &self,
        attr: Attr,
        ty: AttrType,
        capacity: usize,
        out: *mut c_void,
    ) -> Result<usize, CudnnError> {
        let mut count = 0i64;
        let status =
            (self.lib.api.backend_get)(self.raw, attr as u32, ty as u32, capacity as i64, &mut count, out);
        self.lib
            .check(status, || format!("cudnnBackendGetAttribute({attr:?}) on {self}"))?;
        // cuDNN reports how many elements exist, which may exceed what it was asked to write.
        let count = usize::try_from(count).unwrap_or(0);
        Ok(if capacity == 0 { count } else { count.min(capacity) })
    }
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} `{}`", self.kind, self.label)
    }
}

impl Drop for Descriptor {
    fn drop(&mut self) {
        // SAFETY: created by `backend_create`, destroyed exactly once. A failure here (only for
        // an invalid pointer, which cannot happen) has no one to report to.
        unsafe { (self.lib.api.backend_destroy)(self.raw) };
    }
}
