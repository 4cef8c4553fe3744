//! Tuned algorithm choices on disk, so that a second process skips the autotuning of every GEMM
//! shape (heuristic query, scratch buffers, timing each candidate) and only re-checks the stored
//! algorithm with cuBLASLt.
//!
//! One small JSON file per spec and GPU model: the full [`AlgoKey`], the algorithm's 64 bytes as
//! eight hex words, the workspace it needs, its tuned time, and a SHA-256 of those. An entry is
//! used only if every key field matches this process exactly and the checksum holds; anything
//! else is [`AlgoLookup::Rejected`] with a reason naming the field, and the caller re-tunes. The
//! file name hashes only the spec, tuning settings and GPU, so after a cuBLASLt or lancet
//! upgrade the old entry is found, rejected with a warning, and overwritten.

use std::io;

use serde::{Deserialize, Serialize};

use super::error::Version;
use super::spec::GemmSpec;
use crate::cache_dir::{self, first_difference, EntryFormat};
use crate::device::DeviceInfo;

/// Version of the file layout below; bump it when a field changes meaning.
const FORMAT: u32 = 1;

/// Everything a tuned choice depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlgoKey {
    pub lancet: String,
    /// `cublasLtGetVersion()`: algorithm structs are only portable within one cuBLASLt release.
    pub cublaslt: usize,
    pub gpu: String,
    pub arch: String,
    pub sm_count: i32,
    /// [`GemmSpec::signature`].
    pub spec: String,
    /// The workspace limit the candidates were drawn under.
    pub workspace_bytes: usize,
    /// How many heuristic candidates were timed (1: the heuristic's first choice, untimed).
    pub candidates: usize,
}

impl AlgoKey {
    pub fn new(
        cublaslt: Version,
        device: &DeviceInfo,
        spec: &GemmSpec,
        workspace_bytes: usize,
        candidates: usize,
    ) -> Self {
        AlgoKey {
            lancet: env!("CARGO_PKG_VERSION").to_owned(),
            cublaslt: cublaslt.0,
            gpu: device.name.clone(),
            arch: device.arch(),
            sm_count: device.sm_count,
            spec: spec.signature(),
            workspace_bytes,
            candidates,
        }
    }

    fn file_name(&self) -> String {
        let identity = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.gpu, self.arch, self.sm_count, self.spec, self.workspace_bytes, self.candidates
        );
        format!("{}.json", &sha256(identity.as_bytes())[..16])
    }

    /// The first field in which `stored` differs from `self`, described for a warning.
    fn mismatch(&self, stored: &AlgoKey) -> Option<String> {
        let fields: [(&str, String, String); 8] = [
            ("lancet version", stored.lancet.clone(), self.lancet.clone()),
            (
                "cuBLASLt version",
                stored.cublaslt.to_string(),
                self.cublaslt.to_string(),
            ),
            ("GPU", stored.gpu.clone(), self.gpu.clone()),
            ("architecture", stored.arch.clone(), self.arch.clone()),
            ("SM count", stored.sm_count.to_string(), self.sm_count.to_string()),
            ("spec", stored.spec.clone(), self.spec.clone()),
            (
                "workspace bytes",
                stored.workspace_bytes.to_string(),
                self.workspace_bytes.to_string(),
            ),
            (
                "candidate count",
                stored.candidates.to_string(),
                self.candidates.to_string(),
            ),
        ];
        first_difference(fields).map(|(field, stored, current)| {
            format!("it was tuned for {field} {stored}, this process has {current}")
        })
    }
}

/// A tuned choice as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredAlgo {
    /// The `cublasLtMatmulAlgo_t` words ([`Algo::words`](super::Algo::words)).
    #[serde(with = "hex_words")]
    pub words: [u64; 8],
    /// Workspace bytes the algorithm needs.
    pub workspace_size: usize,
    /// Its median time when it was tuned, in milliseconds.
    pub median_ms: f64,
}

/// What an algorithm lookup found.
pub type AlgoLookup = cache_dir::Lookup<StoredAlgo>;

#[derive(Serialize, Deserialize)]
struct Entry {
    format: u32,
    key: AlgoKey,
    algo: StoredAlgo,
    /// SHA-256 of `algo` as serialized in this file.
    algo_sha256: String,
}

/// The format of tuned choices: one JSON entry with its key and checksum.
pub struct Algos;

/// A folder of tuned choices.
pub type AlgoStore = cache_dir::Entries<Algos>;

impl EntryFormat for Algos {
    const KIND: &'static str = "cublaslt";
    type Key = AlgoKey;
    type Value = StoredAlgo;

    fn file_name(key: &AlgoKey) -> String {
        key.file_name()
    }

    fn encode(key: &AlgoKey, algo: &StoredAlgo) -> io::Result<Vec<u8>> {
        let entry = Entry {
            format: FORMAT,
            key: key.clone(),
            algo: algo.clone(),
            algo_sha256: checksum(algo)?,
        };
        serde_json::to_vec_pretty(&entry).map_err(io::Error::other)
    }

    fn decode(key: &AlgoKey, bytes: &[u8]) -> AlgoLookup {
        parse(key, bytes)
    }
}

fn parse(key: &AlgoKey, bytes: &[u8]) -> AlgoLookup {
    let entry: Entry = match serde_json::from_slice(bytes) {
        Ok(entry) => entry,
        Err(e) => return AlgoLookup::Rejected(format!("it is unreadable: {e}")),
    };
    if entry.format != FORMAT {
        return AlgoLookup::Rejected(format!(
            "it is in format {}, this lancet reads format {FORMAT}",
            entry.format
        ));
    }
    if let Some(reason) = key.mismatch(&entry.key) {
        return AlgoLookup::Rejected(reason);
    }
    match checksum(&entry.algo) {
        Ok(sum) if sum == entry.algo_sha256 => AlgoLookup::Hit(entry.algo),
        Ok(sum) => AlgoLookup::Rejected(format!(
            "its checksum is {sum}, the file says {} (corrupted)",
            entry.algo_sha256
        )),
        Err(e) => AlgoLookup::Rejected(format!("its algorithm cannot be hashed: {e}")),
    }
}

fn checksum(algo: &StoredAlgo) -> io::Result<String> {
    let text = serde_json::to_string(algo).map_err(io::Error::other)?;
    Ok(sha256(text.as_bytes()))
}

fn sha256(bytes: &[u8]) -> String {
    cache_dir::sha256_hex(bytes)
}

/// The algorithm words as 16-digit hex strings: JSON numbers would lose bits above 2⁵³ in
/// other readers, and hex shows the opaque struct as what it is.
mod hex_words {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(words: &[u64; 8], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(words.iter().map(|w| format!("{w:016x}")))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; 8], D::Error> {
        let text = Vec::<String>::deserialize(d)?;
        let words = text
            .iter()
            .map(|t| u64::from_str_radix(t, 16).map_err(D::Error::custom))
            .collect::<Result<Vec<u64>, _>>()?;
        words
            .try_into()
            .map_err(|w: Vec<u64>| D::Error::custom(format!("{} words, expected 8", w.len())))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn key() -> AlgoKey {
        AlgoKey {
            lancet: "0.1.0".into(),
            cublaslt: 130100,
            gpu: "NVIDIA H100 80GB HBM3".into(),
            arch: "sm_90".into(),
            sm_count: 132,
            spec: GemmSpec::fp8(4096, 3072, 2048).signature(),
            workspace_bytes: 32 << 20,
            candidates: 8,
        }
    }

    fn algo() -> StoredAlgo {
        StoredAlgo {
            words: [66, 0x0123_4567_89ab_cdef, 0, u64::MAX, 5, 6, 7, 8],
            workspace_size: 1 << 20,
            median_ms: 0.0612,
        }
    }

    /// A store in a folder of its own, removed when the test ends (also when it fails).
    fn store() -> (AlgoStore, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix("lancet-algo-store-")
            .tempdir()
            .unwrap();
        (AlgoStore::new(dir.path()), dir)
    }

    fn rejected(lookup: AlgoLookup) -> String {
        match lookup {
            AlgoLookup::Rejected(reason) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_and_miss() {
        let (store, dir) = store();
        assert_eq!(store.load(&key()), AlgoLookup::Miss);
        let path = store.store(&key(), &algo()).unwrap();
        assert!(path.starts_with(dir.path()) && path.extension().unwrap() == "json");
        assert_eq!(store.load(&key()), AlgoLookup::Hit(algo()));
        store.store(&key(), &algo()).unwrap();
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files left"
        );
    }

    #[test]
    fn timings_with_many_digits_round_trip_exactly() {
        // Measured medians have 17 significant digits; the checksum covers them, so reading one
        // back must give the very same f64 (serde_json's `float_roundtrip`), or every entry would
        // look corrupted (seen on the device before the feature was on).
        let (store, _dir) = store();
        let mut a = algo();
        for median_ms in [
            0.038_312_345_678_912_34,
            0.1 + 0.2,
            1.0 / 3.0,
            0.095_124_999_999_999_99,
        ] {
            a.median_ms = median_ms;
            store.store(&key(), &a).unwrap();
            assert_eq!(
                store.load(&key()),
                AlgoLookup::Hit(a.clone()),
                "median {median_ms:e}"
            );
        }
    }

    #[test]
    fn specs_settings_and_gpus_get_their_own_files() {
        let base = key().file_name();
        let mut other = key();
        other.spec = GemmSpec::fp8(4096, 3072, 2048).with_residual(true).signature();
        assert_ne!(base, other.file_name());
        let mut other = key();
        other.workspace_bytes = 1 << 20;
        assert_ne!(base, other.file_name());
        let mut other = key();
        other.gpu = "NVIDIA H200".into();
        assert_ne!(base, other.file_name());
        // Versions are checked, not hashed: an upgrade overwrites the old entry.
        let mut other = key();
        other.cublaslt = 130200;
        assert_eq!(base, other.file_name());
    }

    #[test]
    fn a_different_version_is_rejected_by_name() {
        let (store, _dir) = store();
        store.store(&key(), &algo()).unwrap();
        let mut upgraded = key();
        upgraded.cublaslt = 130200;
        assert_eq!(
            rejected(store.load(&upgraded)),
            "it was tuned for cuBLASLt version 130100, this process has 130200"
        );
        let mut upgraded = key();
        upgraded.lancet = "0.2.0".into();
        assert!(rejected(store.load(&upgraded)).contains("lancet version 0.1.0"));
    }

    #[test]
    fn corruption_is_rejected_not_trusted() {
        let (store, _dir) = store();
        let path = store.store(&key(), &algo()).unwrap();
        let good = fs::read_to_string(&path).unwrap();

        let flipped = good.replacen("0123456789abcdef", "0123456789abcdee", 1);
        assert_ne!(flipped, good);
        fs::write(&path, &flipped).unwrap();
        assert!(rejected(store.load(&key())).contains("corrupted"));

        fs::write(&path, &good[..good.len() / 2]).unwrap();
        assert!(rejected(store.load(&key())).starts_with("it is unreadable"));

        let mut short: serde_json::Value = serde_json::from_str(&good).unwrap();
        short["algo"]["words"].as_array_mut().unwrap().pop();
        fs::write(&path, short.to_string()).unwrap();
        assert!(rejected(store.load(&key())).contains("7 words, expected 8"));

        fs::write(&path, good.replacen("\"format\": 1", "\"format\": 7", 1)).unwrap();
        assert!(rejected(store.load(&key())).contains("format 7"));
    }
}
