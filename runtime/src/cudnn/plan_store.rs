//! Serialized execution plans on disk, so that a second process restores a plan in tens of
//! milliseconds instead of compiling it again (about a second for fused attention).
//!
//! One file per graph and GPU model: a one-line JSON header, then cuDNN's plan representation.
//! The header carries the full [`PlanKey`] and a checksum of the plan. An entry is used only if
//! every key field matches this process exactly and the checksum holds; anything else is
//! [`Lookup::Rejected`] with a reason that names the field, and the caller rebuilds. The file
//! name hashes only the graph and GPU, so after a cuDNN or lancet upgrade the old entry is found,
//! rejected with a warning, and overwritten, rather than piling up next to the new one.

use std::io;

use serde::{Deserialize, Serialize};

use super::error::Version;
use super::graph::GraphSpec;
use crate::cache_dir::{self, first_difference, EntryFormat};
use crate::device::DeviceInfo;

/// Version of the file layout below; bump it when the header or body changes meaning.
const FORMAT: u32 = 1;

/// Everything a serialized plan depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanKey {
    /// lancet's version (graph builders and this format live in lancet).
    pub lancet: String,
    /// `cudnnGetVersion()`: plans are not portable across cuDNN releases.
    pub cudnn: usize,
    pub gpu: String,
    pub arch: String,
    pub sm_count: i32,
    /// The graph's canonical text ([`GraphSpec::signature`](super::GraphSpec::signature)).
    pub graph: String,
}

impl PlanKey {
    /// The key of `graph` built by this lancet with `cudnn` on `device`.
    pub fn new(cudnn: Version, device: &DeviceInfo, graph: &GraphSpec) -> Self {
        PlanKey {
            lancet: env!("CARGO_PKG_VERSION").to_owned(),
            cudnn: cudnn.0,
            gpu: device.name.clone(),
            arch: device.arch(),
            sm_count: device.sm_count,
            graph: graph.signature(),
        }
    }

    fn file_name(&self) -> String {
        let identity = format!("{}\n{}\n{}\n{}", self.gpu, self.arch, self.sm_count, self.graph);
        format!("{:016x}.plan", fnv1a64(identity.as_bytes()))
    }

    /// The first field in which `stored` differs from `self`, described for a warning.
    fn mismatch(&self, stored: &PlanKey) -> Option<String> {
        let fields: [(&str, String, String); 6] = [
            ("lancet version", stored.lancet.clone(), self.lancet.clone()),
            ("cuDNN version", stored.cudnn.to_string(), self.cudnn.to_string()),
            ("GPU", stored.gpu.clone(), self.gpu.clone()),
            ("architecture", stored.arch.clone(), self.arch.clone()),
            ("SM count", stored.sm_count.to_string(), self.sm_count.to_string()),
            ("graph", stored.graph.clone(), self.graph.clone()),
        ];
        first_difference(fields).map(|(field, stored, current)| match field {
            "graph" => "it was built for a different graph (hash collision)".to_owned(),
            _ => format!("it was built for {field} {stored}, this process has {current}"),
        })
    }
}

/// A plan as stored: cuDNN's representation and the engine it ran, to check after restoring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPlan {
    pub engine: i64,
    pub json: Vec<u8>,
}

/// What a plan lookup found.
pub type Lookup = cache_dir::Lookup<StoredPlan>;

#[derive(Serialize, Deserialize)]
struct Header {
    format: u32,
    key: PlanKey,
    engine: i64,
    plan_bytes: usize,
    plan_fnv1a64: String,
}

/// The format of serialized plans: a one-line JSON header, then cuDNN's representation.
pub struct Plans;

/// A folder of serialized plans.
pub type PlanStore = cache_dir::Entries<Plans>;

impl EntryFormat for Plans {
    const KIND: &'static str = "cudnn";
    type Key = PlanKey;
    type Value = StoredPlan;

    fn file_name(key: &PlanKey) -> String {
        key.file_name()
    }

    fn encode(key: &PlanKey, plan: &StoredPlan) -> io::Result<Vec<u8>> {
        let header = Header {
            format: FORMAT,
            key: key.clone(),
            engine: plan.engine,
            plan_bytes: plan.json.len(),
            plan_fnv1a64: format!("{:016x}", fnv1a64(&plan.json)),
        };
        let mut bytes = serde_json::to_vec(&header).map_err(io::Error::other)?;
        bytes.push(b'\n');
        bytes.extend_from_slice(&plan.json);
        Ok(bytes)
    }

    fn decode(key: &PlanKey, bytes: &[u8]) -> Lookup {
        parse(key, bytes)
    }
}

fn parse(key: &PlanKey, bytes: &[u8]) -> Lookup {
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Lookup::Rejected("it has no header line".into());
    };
    let header: Header = match serde_json::from_slice(&bytes[..newline]) {
        Ok(header) => header,
        Err(e) => return Lookup::Rejected(format!("its header is unreadable: {e}")),
    };
    if header.format != FORMAT {
        return Lookup::Rejected(format!(
            "it is in format {}, this lancet reads format {FORMAT}",
            header.format
        ));
    }
    if let Some(reason) = key.mismatch(&header.key) {
        return Lookup::Rejected(reason);
    }
    let json = &bytes[newline + 1..];
    if json.len() != header.plan_bytes {
        return Lookup::Rejected(format!(
            "its plan has {} bytes, the header says {} (truncated?)",
            json.len(),
            header.plan_bytes
        ));
    }
    let sum = format!("{:016x}", fnv1a64(json));
    if sum != header.plan_fnv1a64 {
        return Lookup::Rejected(format!(
            "its plan checksum is {sum}, the header says {} (corrupted)",
            header.plan_fnv1a64
        ));
    }
    Lookup::Hit(StoredPlan {
        engine: header.engine,
        json: json.to_vec(),
    })
}

/// 64-bit FNV-1a: a stable hash (unlike `std`'s, which may change between Rust releases) for
/// file names and corruption checks. Not a defence against deliberate tampering: cache files
/// are as trusted as the user's home directory.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn key() -> PlanKey {
        PlanKey {
            lancet: "0.1.0".into(),
            cudnn: 91400,
            gpu: "NVIDIA H100 80GB HBM3".into(),
            arch: "sm_90".into(),
            sm_count: 132,
            graph: "t0:bf16:dev:[2, 32, 2048, 64]:[6291456, 64, 3072, 1];mm(0,1)->4;".into(),
        }
    }

    fn plan() -> StoredPlan {
        StoredPlan {
            engine: 2,
            json: br#"{"cudnn plan":"opaque"}"#.to_vec(),
        }
    }

    /// A store in a folder of its own, removed when the test ends (also when it fails).
    fn store() -> (PlanStore, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix("lancet-plan-store-")
            .tempdir()
            .unwrap();
        (PlanStore::new(dir.path()), dir)
    }

    fn rejected(lookup: Lookup) -> String {
        match lookup {
            Lookup::Rejected(reason) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn round_trip_and_miss() {
        let (store, dir) = store();
        assert_eq!(store.load(&key()), Lookup::Miss);
        let path = store.store(&key(), &plan()).unwrap();
        assert!(path.starts_with(dir.path()) && path.extension().unwrap() == "plan");
        assert_eq!(store.load(&key()), Lookup::Hit(plan()));
        // Overwriting leaves no temporary files behind.
        store.store(&key(), &plan()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn other_graphs_and_gpus_get_other_files() {
        let mut other = key();
        other.graph.push_str("pw:Exp:f32(4,None,None)->5;");
        assert_ne!(key().file_name(), other.file_name());
        let mut other = key();
        other.gpu = "NVIDIA H200".into();
        assert_ne!(key().file_name(), other.file_name());
    }

    #[test]
    fn a_different_cudnn_or_lancet_version_is_rejected_by_name() {
        let (store, _dir) = store();
        store.store(&key(), &plan()).unwrap();
        let mut upgraded = key();
        upgraded.cudnn = 91900;
        assert_eq!(
            rejected(store.load(&upgraded)),
            "it was built for cuDNN version 91400, this process has 91900"
        );
        let mut upgraded = key();
        upgraded.lancet = "0.2.0".into();
        assert!(rejected(store.load(&upgraded)).contains("lancet version 0.1.0"));
    }

    #[test]
    fn corruption_is_rejected_not_trusted() {
        let (store, _dir) = store();
        let path = store.store(&key(), &plan()).unwrap();
        let good = fs::read(&path).unwrap();

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x20;
        fs::write(&path, &flipped).unwrap();
        assert!(rejected(store.load(&key())).contains("corrupted"));

        fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(rejected(store.load(&key())).contains("truncated"));

        fs::write(&path, b"garbage without a newline").unwrap();
        assert_eq!(rejected(store.load(&key())), "it has no header line");

        fs::write(&path, b"{\"format\": 1}\n{}").unwrap();
        assert!(rejected(store.load(&key())).starts_with("its header is unreadable"));

        let text = String::from_utf8(good)
            .unwrap()
            .replacen("\"format\":1", "\"format\":7", 1);
        fs::write(&path, text).unwrap();
        assert!(rejected(store.load(&key())).contains("format 7"));
    }

    #[test]
    fn fnv_matches_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
