//! The on-disk cubin cache.
//!
//! An entry is `<key>.cubin` plus `<key>.json`, the key being the SHA-256 of the entry's
//! signature: the source, architecture, NVRTC version, options and lancet version. The sidecar
//! repeats the signature and the cubin's own hash, so a mismatched or corrupt entry (a truncated
//! write, a hand edit, a hash collision) is detected, reported by field, and recompiled — never
//! loaded.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::nvrtc::PtxasReport;
use super::toolkit::LibraryId;
use crate::cache_dir::{first_difference, Lookup as Found, Store};

/// Everything a cubin depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub source_sha256: String,
    pub arch: String,
    pub nvrtc: String,
    pub options: Vec<String>,
    pub lancet: String,
}

#[derive(Serialize, Deserialize)]
struct Sidecar {
    signature: Signature,
    cubin_sha256: String,
    report: PtxasReport,
    log: String,
}

pub use crate::cache_dir::sha256_hex as sha256;

impl Signature {
    pub fn key(&self) -> String {
        sha256(
            serde_json::to_string(self)
                .expect("signatures serialize")
                .as_bytes(),
        )
    }
}

/// A cubin cache in one folder.
pub struct Cache(Store);

/// A cached compilation.
pub struct Cached {
    pub cubin: Vec<u8>,
    pub report: PtxasReport,
    pub log: String,
}

/// What a lookup found; a rejection's reason names the file and the field or the corruption.
pub type Lookup = crate::cache_dir::Lookup<Cached>;

/// The NVRTC version a library had when it was last loaded.
#[derive(Serialize, Deserialize)]
struct Remembered {
    library: LibraryId,
    version: (i32, i32),
}

const TOOLKIT_FILE: &str = "toolkit.json";

impl Cache {
    pub fn new(dir: PathBuf) -> Self {
        Cache(Store::new(dir))
    }

    /// The version of NVRTC library `id`, if it was recorded when that very file (same path,
    /// size and modification time) was last loaded.
    pub fn remembered_version(&self, id: &LibraryId) -> Option<(i32, i32)> {
        let Found::Hit(bytes) = self.0.read(TOOLKIT_FILE) else {
            return None;
        };
        let remembered: Remembered = serde_json::from_slice(&bytes).ok()?;
        (remembered.library == *id).then_some(remembered.version)
    }

    /// Records the version of NVRTC library `id`.
    pub fn remember_version(&self, id: &LibraryId, version: (i32, i32)) -> std::io::Result<()> {
        let remembered = Remembered {
            library: id.clone(),
            version,
        };
        let text = serde_json::to_vec_pretty(&remembered).map_err(std::io::Error::other)?;
        self.0.write(TOOLKIT_FILE, &text).map(drop)
    }

    pub fn get(&self, signature: &Signature) -> Lookup {
        let key = signature.key();
        let (cubin_file, json_file) = (format!("{key}.cubin"), format!("{key}.json"));
        let in_file = |file: &str, reason: String| format!("{}: {reason}", self.0.path(file).display());
        self.0.read(&json_file).and_then(|text| {
            let sidecar: Sidecar = match serde_json::from_slice(&text) {
                Ok(s) => s,
                Err(e) => return Lookup::Rejected(in_file(&json_file, format!("unreadable ({e})"))),
            };
            if let Some((field, stored, current)) = mismatch(&sidecar.signature, signature) {
                let reason = format!("field '{field}' is {stored}, this process has {current}");
                return Lookup::Rejected(in_file(&json_file, reason));
            }
            match self.0.read(&cubin_file) {
                Found::Hit(cubin) if sha256(&cubin) == sidecar.cubin_sha256 => Lookup::Hit(Cached {
                    cubin,
                    report: sidecar.report,
                    log: sidecar.log,
                }),
                Found::Hit(_) => Lookup::Rejected(in_file(
                    &cubin_file,
                    "contents do not match their recorded hash".into(),
                )),
                Found::Miss => Lookup::Rejected(in_file(&cubin_file, "missing beside its sidecar".into())),
                Found::Rejected(reason) => Lookup::Rejected(in_file(&cubin_file, reason)),
            }
        })
    }

    /// Stores an entry: the cubin, then its sidecar (each written atomically), so a reader sees
    /// a sidecar only once its cubin is complete.
    pub fn put(
        &self,
        signature: &Signature,
        cubin: &[u8],
        report: &PtxasReport,
        log: &str,
    ) -> std::io::Result<()> {
        let key = signature.key();
        let sidecar = Sidecar {
            signature: signature.clone(),
            cubin_sha256: sha256(cubin),
            report: report.clone(),
            log: log.to_string(),
        };
        self.0.write(&format!("{key}.cubin"), cubin)?;
        let json = serde_json::to_vec_pretty(&sidecar).map_err(std::io::Error::other)?;
        self.0.write(&format!("{key}.json"), &json).map(drop)
    }
}

/// The first signature field in which `stored` differs from `wanted`, with both values.
fn mismatch(stored: &Signature, wanted: &Signature) -> Option<(&'static str, String, String)> {
    first_difference([
        (
            "source_sha256",
            stored.source_sha256.clone(),
            wanted.source_sha256.clone(),
        ),
        ("arch", stored.arch.clone(), wanted.arch.clone()),
        ("nvrtc", stored.nvrtc.clone(), wanted.nvrtc.clone()),
        ("options", stored.options.join(" "), wanted.options.join(" ")),
        ("lancet", stored.lancet.clone(), wanted.lancet.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvrtc_versions_are_remembered_per_library_file() {
        let dir = scratch("toolkit");
        let cache = Cache::new(dir.path().to_path_buf());
        let id = LibraryId {
            path: "/opt/cuda/lib64/libnvrtc.so.13".into(),
            size: 100,
            modified_ns: 7,
        };
        assert_eq!(cache.remembered_version(&id), None);
        cache.remember_version(&id, (13, 0)).unwrap();
        assert_eq!(cache.remembered_version(&id), Some((13, 0)));
        // The same path after an upgrade (another size or time) is a different library.
        let upgraded = LibraryId {
            size: 101,
            ..id.clone()
        };
        assert_eq!(cache.remembered_version(&upgraded), None);
        let touched = LibraryId { modified_ns: 8, ..id };
        assert_eq!(cache.remembered_version(&touched), None);
    }

    fn signature() -> Signature {
        Signature {
            source_sha256: sha256(b"kernel"),
            arch: "sm_90a".into(),
            nvrtc: "13.5".into(),
            options: vec!["--std=c++17".into()],
            lancet: "0.1.0".into(),
        }
    }

    /// A folder of its own for one test, removed when the test ends (also when it fails).
    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("lancet-jit-cache-{name}-"))
            .tempdir()
            .unwrap()
    }

    #[test]
    fn round_trip_and_miss() {
        let dir = scratch("rt");
        let cache = Cache::new(dir.path().to_path_buf());
        let sig = signature();
        assert!(matches!(cache.get(&sig), Lookup::Miss));
        let report = PtxasReport {
            registers: 30,
            ..Default::default()
        };
        cache.put(&sig, b"\x7fELFcubin", &report, "log").unwrap();
        match cache.get(&sig) {
            Lookup::Hit(Cached { cubin, report: r, .. }) => {
                assert_eq!(cubin, b"\x7fELFcubin");
                assert_eq!(r, report);
            }
            _ => panic!("expected a hit"),
        }
        let mut other = sig.clone();
        other.arch = "sm_80".into();
        assert!(
            matches!(cache.get(&other), Lookup::Miss),
            "another signature is another key"
        );
    }

    #[test]
    fn corrupt_cubin_is_rejected() {
        let dir = scratch("corrupt");
        let cache = Cache::new(dir.path().to_path_buf());
        let sig = signature();
        cache
            .put(&sig, b"good bytes", &PtxasReport::default(), "")
            .unwrap();
        std::fs::write(dir.path().join(format!("{}.cubin", sig.key())), b"bad bytes").unwrap();
        match cache.get(&sig) {
            Lookup::Rejected(why) => assert!(why.contains("do not match their recorded hash"), "{why}"),
            _ => panic!("a corrupt cubin must be rejected"),
        }
    }

    #[test]
    fn mismatched_sidecar_names_the_field() {
        let dir = scratch("mismatch");
        let cache = Cache::new(dir.path().to_path_buf());
        let sig = signature();
        cache.put(&sig, b"bytes", &PtxasReport::default(), "").unwrap();
        let json = dir.path().join(format!("{}.json", sig.key()));
        let text = std::fs::read_to_string(&json).unwrap().replace("13.5", "12.4");
        std::fs::write(&json, text).unwrap();
        match cache.get(&sig) {
            Lookup::Rejected(why) => assert!(why.contains("field 'nvrtc'"), "{why}"),
            _ => panic!("a mismatched entry must be rejected"),
        }
        std::fs::write(&json, "{ not json").unwrap();
        assert!(matches!(cache.get(&sig), Lookup::Rejected(why) if why.contains("unreadable")));
    }
}
