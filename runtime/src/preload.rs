//! Reading the GPU libraries into the page cache before they are loaded.
//!
//! On a machine that has not loaded them since it booted, cuDNN's engine libraries and NVRTC
//! come off the disk as the loader touches them, page fault by page fault, half a gigabyte in
//! all: that made the first process on a fresh H100 machine take three times as long to get
//! ready as the next one. Asking the kernel to read the same files front to back from the start
//! of the process, in the background, turns most of those faults into page-cache hits.
//!
//! Loading the libraries early instead does not work: `dlopen` holds the dynamic loader's lock
//! for as long as it runs, and the driver needs that lock to make the CUDA context, so an early
//! `dlopen` of cuBLASLt delayed the context by as long as the load took (measured on the H100).
//! Reading files takes no lock.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// cuDNN's sub-libraries that building and running an attention plan loads: the graph API,
/// the heuristics, and the engines (fused attention is runtime-compiled; cuDNN opens the
/// precompiled engines too).
const CUDNN_PARTS: [&str; 4] = [
    "libcudnn_graph.so",
    "libcudnn_heuristic.so",
    "libcudnn_engines_runtime_compiled.so",
    "libcudnn_engines_precompiled.so",
];

/// The read-ahead requests under way, on a thread of their own.
pub struct Preload {
    requests: JoinHandle<Vec<ReadAhead>>,
}

/// A file asked into the page cache, and its size.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReadAhead {
    pub file: String,
    pub bytes: u64,
}

/// Asks the kernel to read `files` into the page cache, from a thread of its own (queuing a
/// read takes milliseconds; the reads themselves go on in the background). A file that cannot be
/// opened is skipped: whoever loads it later reports the problem.
pub fn start(files: Vec<PathBuf>) -> Preload {
    Preload {
        requests: std::thread::spawn(move || files.iter().filter_map(|f| request(f).ok()).collect()),
    }
}

/// Queues `path` for reading with `readahead(2)`, which copies nothing out, so a file already
/// cached costs microseconds; with `posix_fadvise(WILLNEED)` where the file system refuses it.
fn request(path: &Path) -> std::io::Result<ReadAhead> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let bytes = file.metadata()?.len();
    let fd = file.as_raw_fd();
    let len = usize::try_from(bytes).unwrap_or(usize::MAX);
    // SAFETY: a valid open descriptor; both calls only fill the page cache.
    if unsafe { libc::readahead(fd, 0, len) } != 0 {
        let len = libc::off_t::try_from(bytes).unwrap_or(libc::off_t::MAX);
        // SAFETY: as above.
        let advised = unsafe { libc::posix_fadvise(fd, 0, len, libc::POSIX_FADV_WILLNEED) };
        if advised != 0 {
            return Err(std::io::Error::from_raw_os_error(advised));
        }
    }
    Ok(ReadAhead {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes,
    })
}

impl Preload {
    /// The files asked for, once every request is queued.
    pub fn join(self) -> Vec<ReadAhead> {
        self.requests.join().unwrap_or_default()
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
    fn asks_for_whole_files_and_skips_missing_ones() {
        let dir = std::env::temp_dir().join(format!("lancet-preload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lib.so");
        std::fs::write(&file, vec![7u8; 5 << 20]).unwrap();
        let asked = start(vec![file, dir.join("missing.so")]).join();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(asked.len(), 1);
        assert_eq!((asked[0].file.as_str(), asked[0].bytes), ("lib.so", 5 << 20));
    }

    #[test]
    fn finds_this_process_s_own_libraries_in_its_maps() {
        // The C library is mapped into every Rust process on Linux.
        let folder = mapped_folder("libc.so").or_else(|| mapped_folder("libc-"));
        assert!(folder.is_some_and(|f| f.is_absolute()));
    }
}
