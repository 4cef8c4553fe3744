//! One NVRTC compilation: CUDA source in, cubin and ptxas report out.
//!
//! cudarc's safe NVRTC wrapper returns PTX; lancet wants a cubin for the exact architecture (a
//! newer NVRTC's PTX may not load on an older driver), so this drives `cudarc::nvrtc::sys`.

use std::ffi::{CStr, CString};

use cudarc::nvrtc::sys::{self, nvrtcProgram, nvrtcResult};

use super::JitError;

/// Registers, stack and spills of one compiled kernel, read from ptxas' verbose log.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PtxasReport {
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

impl PtxasReport {
    /// Parses `ptxas info : Used 38 registers …` and `… bytes stack frame, N bytes spill stores,
    /// M bytes spill loads` from an NVRTC program log.
    pub fn parse(log: &str) -> PtxasReport {
        let number_before = |line: &str, word: &str| -> Option<u32> {
            let at = line.find(word)?;
            line[..at].split_whitespace().last()?.parse().ok()
        };
        let mut r = PtxasReport::default();
        for line in log.lines() {
            if let Some(n) = number_before(line, "registers") {
                r.registers = r.registers.max(n);
            }
            if let Some(n) = number_before(line, "bytes stack frame") {
                r.stack_bytes = r.stack_bytes.max(n);
            }
            if let Some(n) = number_before(line, "bytes spill stores") {
                r.spill_stores += n;
            }
            if let Some(n) = number_before(line, "bytes spill loads") {
                r.spill_loads += n;
            }
        }
        r
    }

    pub fn spills(&self) -> bool {
        self.spill_stores > 0 || self.spill_loads > 0
    }
}

/// A compiled kernel.
pub struct Cubin {
    pub image: Vec<u8>,
    /// NVRTC's program log (warnings and the ptxas report).
    pub log: String,
}

/// Frees the program however compilation ends.
struct Program(nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe {
            sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

fn check(status: nvrtcResult, call: &str) -> Result<(), JitError> {
    if status == nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(JitError::Toolkit(format!("{call} failed: {status:?}")))
    }
}

/// Compiles `source` (file name `name` in messages) with `options` to a cubin. A compile error
/// carries NVRTC's log and the source lines it points at.
pub fn compile(name: &str, source: &str, options: &[String]) -> Result<Cubin, JitError> {
    let src =
        CString::new(source).map_err(|_| JitError::Toolkit(format!("{name}: source contains a NUL byte")))?;
    let file =
        CString::new(name).map_err(|_| JitError::Toolkit(format!("{name}: name contains a NUL byte")))?;
    let opts: Vec<CString> = options
        .iter()
        .map(|o| CString::new(o.as_str()).expect("options have no NUL"))
        .collect();
    let opt_ptrs: Vec<*const std::ffi::c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut raw: nvrtcProgram = std::ptr::null_mut();
    // SAFETY: valid C strings; no headers are passed (they come from the include path).
    check(
        unsafe {
            sys::nvrtcCreateProgram(
                &mut raw,
                src.as_ptr(),
                file.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        },
        "nvrtcCreateProgram",
    )?;
    let program = Program(raw);
    // SAFETY: the program is live; the option array outlives the call.
    let status = unsafe { sys::nvrtcCompileProgram(program.0, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    let log = program_log(&program)?;
    if status != nvrtcResult::NVRTC_SUCCESS {
        return Err(JitError::Compile {
            kernel: name.to_string(),
            log: log.clone(),
            context: offending_lines(source, &log, name),
        });
    }
    let mut size = 0usize;
    // SAFETY: the program compiled; `size` is a live out-pointer.
    check(
        unsafe { sys::nvrtcGetCUBINSize(program.0, &mut size) },
        "nvrtcGetCUBINSize",
    )?;
    let mut image = vec![0u8; size];
    // SAFETY: `image` has the size NVRTC reported.
    check(
        unsafe { sys::nvrtcGetCUBIN(program.0, image.as_mut_ptr().cast()) },
        "nvrtcGetCUBIN",
    )?;
    Ok(Cubin { image, log })
}

fn program_log(program: &Program) -> Result<String, JitError> {
    let mut size = 0usize;
    // SAFETY: live program, live out-pointer.
    check(
        unsafe { sys::nvrtcGetProgramLogSize(program.0, &mut size) },
        "nvrtcGetProgramLogSize",
    )?;
    let mut buf = vec![0u8; size.max(1)];
    // SAFETY: `buf` has the size NVRTC reported (at least one byte for the terminator).
    check(
        unsafe { sys::nvrtcGetProgramLog(program.0, buf.as_mut_ptr().cast()) },
        "nvrtcGetProgramLog",
    )?;
    Ok(CStr::from_bytes_until_nul(&buf)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// For every `name(LINE): error` in the log, the source lines around LINE, numbered.
fn offending_lines(source: &str, log: &str, name: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = String::new();
    let prefix = format!("{name}(");
    for entry in log.lines().filter(|l| l.contains("error")) {
        let Some(rest) = entry.find(&prefix).map(|i| &entry[i + prefix.len()..]) else {
            continue;
        };
        let Some(line) = rest.split(')').next().and_then(|n| n.parse::<usize>().ok()) else {
            continue;
        };
        out.push_str(&format!("{entry}\n"));
        for n in line.saturating_sub(2).max(1)..=(line + 1).min(lines.len()) {
            let mark = if n == line { ">" } else { " " };
            out.push_str(&format!("{mark}{n:5} | {}\n", lines[n - 1]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_report() {
        let log = "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n\
                   ptxas info    : Function properties for k\n\
                   \x20   16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
                   ptxas info    : Used 40 registers, used 1 barriers, 400 bytes cmem[0]\n";
        let r = PtxasReport::parse(log);
        assert_eq!(
            r,
            PtxasReport {
                registers: 40,
                stack_bytes: 16,
                spill_stores: 8,
                spill_loads: 4
            }
        );
        assert!(r.spills());
        assert!(!PtxasReport::parse(
            "ptxas info : Used 12 registers\n0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"
        )
        .spills());
    }

    #[test]
    fn points_at_offending_lines() {
        let src = "a\nb\nc\nd\ne";
        let ctx = offending_lines(src, "k.cu(3): error: identifier \"c\" is undefined", "k.cu");
        assert!(ctx.contains(">    3 | c"), "{ctx}");
        assert!(ctx.contains("     2 | b") && ctx.contains("     4 | d"), "{ctx}");
    }
}
