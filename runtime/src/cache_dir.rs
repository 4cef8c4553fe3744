//! Where and how lancet keeps artifacts that outlive a process (NVRTC cubins, cuDNN execution
//! plans, cuBLASLt algorithm choices): each kind in its own subfolder of one root, one file per
//! key, written atomically, and every lookup a [`Lookup`]: a hit, a miss, or an entry rejected
//! with the reason (a key field that differs, a failed checksum), never a stale artifact used.
//!
//! The root is, in order: `$LANCET_CACHE_DIR`; `$XDG_CACHE_HOME/lancet`; `$HOME/.cache/lancet`.
//! Following the XDG base-directory spec, an empty or relative value counts as unset, so a stray
//! `XDG_CACHE_HOME=` never scatters cache files into the working directory.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Overrides every other location when set to an absolute path.
pub const ENV_VAR: &str = "LANCET_CACHE_DIR";

/// The cache root for this process's environment, or `None` when no variable gives one.
pub fn root() -> Option<PathBuf> {
    resolve(|name| std::env::var_os(name))
}

/// The folder for one kind of artifact (`"cudnn"`, `"nvrtc"`, …) under [`root`]. Not created here:
/// writers create it when they first store something, so reading never touches the disk layout.
pub fn subdir(kind: &str) -> Option<PathBuf> {
    root().map(|root| root.join(kind))
}

/// What a lookup in an on-disk cache found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<T> {
    Hit(T),
    Miss,
    /// An entry exists but must not be used; the reason says why.
    Rejected(String),
}

impl<T> Lookup<T> {
    /// Decodes a hit with `decode`, which may itself reject it.
    pub fn and_then<U>(self, decode: impl FnOnce(T) -> Lookup<U>) -> Lookup<U> {
        match self {
            Lookup::Hit(value) => decode(value),
            Lookup::Miss => Lookup::Miss,
            Lookup::Rejected(reason) => Lookup::Rejected(reason),
        }
    }
}

/// A folder of one kind of entry, each a file named by its key.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    /// The `kind` folder of the [cache root](root), if there is one.
    pub fn from_env(kind: &str) -> Option<Self> {
        subdir(kind).map(Store::new)
    }

    /// Where entry `file` lives.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The bytes of entry `file`: a miss when there is none, rejected when it cannot be read.
    pub fn read(&self, file: &str) -> Lookup<Vec<u8>> {
        match std::fs::read(self.path(file)) {
            Ok(bytes) => Lookup::Hit(bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Lookup::Miss,
            Err(e) => Lookup::Rejected(format!("it cannot be read: {e}")),
        }
    }

    /// Writes entry `file` (creating the folder) atomically, returning its path.
    pub fn write(&self, file: &str, bytes: &[u8]) -> io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(file);
        write_atomically(&path, bytes)?;
        Ok(path)
    }
}

/// One kind of typed entry: the subfolder it lives in, how a key names its file, and how a value
/// is written and read back (a read checks the stored key and any checksum, and rejects with the
/// reason).
pub trait EntryFormat {
    const KIND: &'static str;
    type Key;
    type Value;
    fn file_name(key: &Self::Key) -> String;
    fn encode(key: &Self::Key, value: &Self::Value) -> io::Result<Vec<u8>>;
    fn decode(key: &Self::Key, bytes: &[u8]) -> Lookup<Self::Value>;
}

/// A [`Store`] of one [`EntryFormat`].
pub struct Entries<F> {
    store: Store,
    format: std::marker::PhantomData<fn() -> F>,
}

impl<F> Clone for Entries<F> {
    fn clone(&self) -> Self {
        Entries {
            store: self.store.clone(),
            format: std::marker::PhantomData,
        }
    }
}

impl<F> std::fmt::Debug for Entries<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Entries").field(&self.store).finish()
    }
}

impl<F: EntryFormat> Entries<F> {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Entries {
            store: Store::new(dir),
            format: std::marker::PhantomData,
        }
    }

    /// The format's folder of the [cache root](root), if there is one.
    pub fn from_env() -> Option<Self> {
        subdir(F::KIND).map(Self::new)
    }

    /// Where the entry for `key` lives.
    pub fn path(&self, key: &F::Key) -> PathBuf {
        self.store.path(&F::file_name(key))
    }

    pub fn load(&self, key: &F::Key) -> Lookup<F::Value> {
        self.store
            .read(&F::file_name(key))
            .and_then(|bytes| F::decode(key, &bytes))
    }

    /// Writes the entry for `key` atomically (a temporary file renamed over the old entry), so a
    /// concurrent reader sees the old entry or the new one, never half of one.
    pub fn store(&self, key: &F::Key, value: &F::Value) -> io::Result<PathBuf> {
        self.store.write(&F::file_name(key), &F::encode(key, value)?)
    }
}

/// The first of `fields` — (name, stored value, this process's value) — whose values differ:
/// why a stored key does not match, for the rejection's reason.
pub fn first_difference<const N: usize>(
    fields: [(&'static str, String, String); N],
) -> Option<(&'static str, String, String)> {
    fields.into_iter().find(|(_, stored, current)| stored != current)
}

/// Writes `bytes` to `path` through a temporary file renamed over it, so a concurrent reader
/// (another lancet process) sees the old entry or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    // Unique per process and per call, so two threads writing one entry do not share a file.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp{}.{call}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// SHA-256 of `bytes` as lowercase hex: the checksum every cache entry carries.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn resolve(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let absolute = |name: &str| var(name).map(PathBuf::from).filter(|path| path.is_absolute());
    absolute(ENV_VAR)
        .or_else(|| absolute("XDG_CACHE_HOME").map(|xdg| xdg.join("lancet")))
        .or_else(|| absolute("HOME").map(|home| home.join(".cache").join("lancet")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Option<PathBuf> {
        resolve(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn lancet_variable_wins() {
        let vars = [(ENV_VAR, "/lc"), ("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")];
        assert_eq!(with(&vars), Some(PathBuf::from("/lc")));
    }

    #[test]
    fn xdg_then_home() {
        assert_eq!(
            with(&[("XDG_CACHE_HOME", "/xdg"), ("HOME", "/home/u")]),
            Some(PathBuf::from("/xdg/lancet"))
        );
        assert_eq!(
            with(&[("HOME", "/home/u")]),
            Some(PathBuf::from("/home/u/.cache/lancet"))
        );
    }

    #[test]
    fn empty_or_relative_values_count_as_unset() {
        let vars = [(ENV_VAR, ""), ("XDG_CACHE_HOME", "rel/dir"), ("HOME", "/home/u")];
        assert_eq!(with(&vars), Some(PathBuf::from("/home/u/.cache/lancet")));
        assert_eq!(with(&[]), None);
    }
}
