//! A cuBLASLt algorithm: the opaque 64-byte `cublasLtMatmulAlgo_t` that names one kernel
//! configuration, and the readable parts of it (algorithm id, tile, stages, split-K, cluster).
//!
//! NVIDIA documents the struct as trivially serializable for reuse with the same cuBLASLt
//! version, which is what the on-disk store relies on (keyed by that version, and re-checked
//! with `cublasLtMatmulAlgoCheck` when loaded).

use std::fmt;

use cudarc::cublaslt::sys::{cublasLtMatmulAlgoConfigAttributes_t as ConfigAttr, cublasLtMatmulAlgo_t};

use super::error::CublasLtError;
use super::library::Library;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Algo {
    raw: cublasLtMatmulAlgo_t,
}

impl Algo {
    pub fn from_words(words: [u64; 8]) -> Self {
        Algo {
            raw: cublasLtMatmulAlgo_t { data: words },
        }
    }

    pub fn words(&self) -> [u64; 8] {
        self.raw.data
    }

    pub(crate) fn from_raw(raw: cublasLtMatmulAlgo_t) -> Self {
        Algo { raw }
    }

    pub(crate) fn raw(&self) -> &cublasLtMatmulAlgo_t {
        &self.raw
    }

    /// Reads the configuration cuBLASLt encoded in the struct.
    pub fn config(&self, lib: &'static Library) -> Result<AlgoConfig, CublasLtError> {
        Ok(AlgoConfig {
            id: self.read::<i32>(lib, ConfigAttr::CUBLASLT_ALGO_CONFIG_ID)? as i64,
            tile: self.read::<u32>(lib, ConfigAttr::CUBLASLT_ALGO_CONFIG_TILE_ID)?,
            stages: self.read::<u32>(lib, ConfigAttr::CUBLASLT_ALGO_CONFIG_STAGES_ID)?,
            split_k: self.read::<u32>(lib, ConfigAttr::CUBLASLT_ALGO_CONFIG_SPLITK_NUM)?,
            custom: self.read::<u32>(lib, ConfigAttr::CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION)?,
            cluster: self.read::<u16>(lib, ConfigAttr::CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID)?,
        })
    }

    fn read<T: Default + Copy>(&self, lib: &'static Library, attr: ConfigAttr) -> Result<T, CublasLtError> {
        let mut value = T::default();
        let mut written = 0usize;
        let size = std::mem::size_of::<T>();
        // SAFETY: `value` has room for `size` bytes; the callers pick each attribute's C type
        // (integers, for which every bit pattern is valid).
        let status = unsafe {
            (lib.api.algo_config_get)(
                &self.raw,
                attr as u32,
                (&mut value as *mut T).cast(),
                size,
                &mut written,
            )
        };
        lib.check(status, || {
            format!("cublasLtMatmulAlgoConfigGetAttribute({attr:?}, {size} bytes)")
        })?;
        Ok(value)
    }
}

/// The readable configuration of an [`Algo`], as cuBLASLt's own log prints it (ids of
/// `cublasLtMatmulTile_t`, `cublasLtMatmulStages_t` and `cublasLtClusterShape_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AlgoConfig {
    pub id: i64,
    pub tile: u32,
    pub stages: u32,
    pub split_k: u32,
    pub custom: u32,
    pub cluster: u16,
}

/// Names of the tile ids that every cuBLASLt since 12.1 numbers the same way.
const TILES: [&str; 36] = [
    "undefined",
    "8x8",
    "8x16",
    "16x8",
    "8x32",
    "16x16",
    "32x8",
    "8x64",
    "16x32",
    "32x16",
    "64x8",
    "32x32",
    "32x64",
    "64x32",
    "32x128",
    "64x64",
    "128x32",
    "64x128",
    "128x64",
    "64x256",
    "128x128",
    "256x64",
    "64x512",
    "128x256",
    "256x128",
    "512x64",
    "64x96",
    "96x64",
    "96x128",
    "128x160",
    "160x128",
    "192x128",
    "128x192",
    "128x96",
    "32x256",
    "256x32",
];

/// Names of the thread-block cluster shapes (`cublasLtClusterShape_t`) up to id 13.
const CLUSTERS: [&str; 14] = [
    "auto", "#1", "1x1x1", "2x1x1", "4x1x1", "1x2x1", "2x2x1", "4x2x1", "1x4x1", "2x4x1", "4x4x1", "8x1x1",
    "1x8x1", "8x2x1",
];

impl AlgoConfig {
    /// The tile as `rows x cols` where the id is a well-known one, else `#id`.
    pub fn tile_name(&self) -> String {
        name(&TILES, self.tile as usize)
    }

    /// The cluster shape as `x x y x z` for the common ids, else `#id`.
    pub fn cluster_name(&self) -> String {
        name(&CLUSTERS, self.cluster as usize)
    }
}

fn name(table: &[&str], id: usize) -> String {
    table
        .get(id)
        .map_or_else(|| format!("#{id}"), |name| (*name).to_owned())
}

impl fmt::Display for AlgoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "algo {} tile {} stages {} split-k {} custom {} cluster {}",
            self.id,
            self.tile_name(),
            self.stages,
            self.split_k,
            self.custom,
            self.cluster_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::cublaslt::sys::cublasLtClusterShape_t as Cluster;
    use cudarc::cublaslt::sys::cublasLtMatmulTile_t as Tile;

    #[test]
    fn tile_names_match_the_bindings() {
        for (id, name) in [
            (Tile::CUBLASLT_MATMUL_TILE_128x256, "128x256"),
            (Tile::CUBLASLT_MATMUL_TILE_128x160, "128x160"),
            (Tile::CUBLASLT_MATMUL_TILE_256x32, "256x32"),
            (Tile::CUBLASLT_MATMUL_TILE_8x8, "8x8"),
        ] {
            let config = AlgoConfig {
                id: 66,
                tile: id as u32,
                stages: 0,
                split_k: 1,
                custom: 0,
                cluster: 0,
            };
            assert_eq!(config.tile_name(), name);
        }
        let odd = AlgoConfig {
            id: 1,
            tile: 600,
            stages: 0,
            split_k: 1,
            custom: 0,
            cluster: 0,
        };
        assert_eq!(odd.tile_name(), "#600");
    }

    #[test]
    fn cluster_names_match_the_bindings() {
        let config = |cluster: Cluster| AlgoConfig {
            id: 66,
            tile: 23,
            stages: 36,
            split_k: 1,
            custom: 4,
            cluster: cluster as u16,
        };
        for (cluster, name) in [
            (Cluster::CUBLASLT_CLUSTER_SHAPE_AUTO, "auto"),
            (Cluster::CUBLASLT_CLUSTER_SHAPE_1x1x1, "1x1x1"),
            (Cluster::CUBLASLT_CLUSTER_SHAPE_2x1x1, "2x1x1"),
            (Cluster::CUBLASLT_CLUSTER_SHAPE_1x2x1, "1x2x1"),
            (Cluster::CUBLASLT_CLUSTER_SHAPE_4x4x1, "4x4x1"),
            (Cluster::CUBLASLT_CLUSTER_SHAPE_8x2x1, "8x2x1"),
        ] {
            assert_eq!(config(cluster).cluster_name(), name);
        }
        assert_eq!(
            config(Cluster::CUBLASLT_CLUSTER_SHAPE_2x1x1).to_string(),
            "algo 66 tile 128x256 stages 36 split-k 1 custom 4 cluster 2x1x1"
        );
    }

    #[test]
    fn words_round_trip() {
        let words = [1, 2, 3, 4, 5, 6, 7, u64::MAX];
        assert_eq!(Algo::from_words(words).words(), words);
    }
}
