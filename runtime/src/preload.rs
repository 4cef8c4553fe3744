//! Reading the GPU libraries into the page cache before they are loaded.
//!
//! On a machine that has not loaded them since it booted, cuDNN's engine libraries and NVRTC
//! come off the disk as the loader touches them, page fault by page fault, about a gigabyte in
//! all: that made the first process on a fresh H100 machine take three times as long to get
//! ready as the next one. Reading the same files front to back, on threads of their own from the
//! start of the process, turns those faults into page-cache hits.
//!
//! Loading the libraries early instead does not work: `dlopen` holds the dynamic loader's lock
//! for as long as it runs, and the driver needs that lock to make the CUDA context, so an early
//! `dlopen` of cuBLASLt delayed the context by as long as the load took (measured on the H100).
//! Reading files takes no lock.

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Instant;

/// cuDNN's sub-libraries that building and running an attention plan loads: the graph API,
/// the heuristics, and the engines (fused attention is runtime-compiled; cuDNN opens the
/// precompiled engines too).
const CUDNN_PARTS: [&str; 4] = [
    "libcudnn_graph.so",
    "libcudnn_heuristic.so",
    "libcudnn_engines_runtime_compiled.so",
    "libcudnn_engines_precompiled.so",
];

/// Files being read, on threads of their own.
pub struct Preload {
    reads: Vec<(PathBuf, Reading)>,
}

/// A read in progress: bytes read and milliseconds taken, once done.
type Reading = JoinHandle<std::io::Result<(u64, f64)>>;

/// One file read ahead: how many bytes, and how long it took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReadAhead {
    pub file: String,
    pub bytes: u64,
    pub ms: f64,
}

/// Starts reading `files`, each on a thread of its own. A file that cannot be read is skipped:
/// whoever loads it later reports the problem.
pub fn start(files: Vec<PathBuf>) -> Preload {
    let reads = files
        .into_iter()
        .map(|path| {
            let file = path.clone();
            let read = std::thread::spawn(move || {
                let t = Instant::now();
                read_through(&file).map(|bytes| (bytes, t.elapsed().as_secs_f64() * 1e3))
            });
            (path, read)
        })
        .collect();
    Preload { reads }
}

/// Reads `path` into the page cache with `readahead(2)`, which copies nothing out (so a file
/// already cached costs microseconds); by plain reads where the file system refuses it.
fn read_through(path: &Path) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    const CHUNK: u64 = 64 << 20;
    let mut offset = 0;
    while offset < len {
        let count = CHUNK.min(len - offset);
        // SAFETY: a valid open descriptor; readahead only fills the page cache.
        let done = unsafe { libc::readahead(file.as_raw_fd(), offset as libc::off64_t, count as usize) };
        if done != 0 {
            break;
        }
        offset += count;
    }
    if offset >= len {
        return Ok(len);
    }
    let mut buffer = vec![0u8; 4 << 20];
    let mut total = offset;
    file.seek(std::io::SeekFrom::Start(offset))?;
    loop {
        match file.read(&mut buffer)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

impl Preload {
    /// The files read, waiting for those still being read.
    pub fn join(self) -> Vec<ReadAhead> {
        self.reads
            .into_iter()
            .filter_map(|(path, read)| {
                let (bytes, ms) = read.join().ok()?.ok()?;
                Some(ReadAhead {
                    file: path.file_name()?.to_string_lossy().into_owned(),
                    bytes,
                    ms,
                })
            })
            .collect()
    }
}

/// The sub-libraries of the cuDNN this process loaded (see [`CUDNN_PARTS`]), found beside it;
/// none when no cuDNN is loaded or its folder cannot be told.
pub fn cudnn_files() -> Vec<PathBuf> {
    let Ok(library) = crate::cudnn::Library::get() else {
        return Vec::new();
    };
    let folder = match library.path() {
        Some(path) => path.parent().map(Path::to_path_buf),
        None => mapped_folder("libcudnn.so"),
    };
    let Some(folder) = folder else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(&folder) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // The versioned file itself, not its symlinks: one read per library.
            CUDNN_PARTS.iter().any(|part| name.starts_with(part)) && !p.is_symlink()
        })
        .collect();
    files.sort();
    files
}

/// NVRTC and its builtins, beside the NVRTC a search would load (not the toolkit's alternative
/// `.alt.` builds, which nothing loads); none when there is none.
pub fn nvrtc_files() -> Vec<PathBuf> {
    let Some(id) = crate::jit::toolkit::library_id() else {
        return Vec::new();
    };
    let Some(Ok(entries)) = id.path.parent().map(std::fs::read_dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("libnvrtc") && name.contains(".so") && !name.contains(".alt.") && !p.is_symlink()
        })
        .collect();
    files.sort();
    files
}

/// The folder of the first file mapped into this process whose name starts with `prefix`.
fn mapped_folder(prefix: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|path| {
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .and_then(|path| path.parent().map(Path::to_path_buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_byte_and_skips_missing_files() {
        let dir = std::env::temp_dir().join(format!("lancet-preload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lib.so");
        std::fs::write(&file, vec![7u8; 5 << 20]).unwrap();
        let read = start(vec![file, dir.join("missing.so")]).join();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].file.as_str(), read[0].bytes), ("lib.so", 5 << 20));
    }

    #[test]
    fn finds_this_process_s_own_libraries_in_its_maps() {
        // The C library is mapped into every Rust process on Linux.
        let folder = mapped_folder("libc.so").or_else(|| mapped_folder("libc-"));
        assert!(folder.is_some_and(|f| f.is_absolute()));
    }
}
