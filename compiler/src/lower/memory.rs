//! Memory planning: activations whose lifetimes do not overlap share arena space.

/// Byte alignment of every arena placement (cuBLASLt and vector loads want ≥ 16; 256 matches
/// the CUDA allocator, so a placed buffer is as aligned as a fresh allocation).
pub const ALIGN: usize = 256;

/// One buffer to place: its size and the steps it is live over (inclusive).
#[derive(Clone, Copy, Debug)]
pub struct Lifetime {
    pub bytes: usize,
    pub first: usize,
    pub last: usize,
}

/// Arena offsets for `lifetimes` and the arena size. Greedy by size, largest first, each at the
/// lowest offset that no placed buffer with an overlapping lifetime occupies — the classic
/// heuristic, within a few percent of optimal on transformer graphs.
pub fn plan(lifetimes: &[Lifetime]) -> (Vec<usize>, usize) {
    let round = |b: usize| b.div_ceil(ALIGN) * ALIGN;
    let mut order: Vec<usize> = (0..lifetimes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(lifetimes[i].bytes), lifetimes[i].first, i));
    let mut offsets = vec![0usize; lifetimes.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena = 0;
    for i in order {
        let me = lifetimes[i];
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| lifetimes[j].first <= me.last && me.first <= lifetimes[j].last)
            .map(|&j| (offsets[j], offsets[j] + round(lifetimes[j].bytes)))
            .collect();
        busy.sort_unstable();
        let mut offset = 0;
        for (start, end) in busy {
            if offset + round(me.bytes) <= start {
                break;
            }
            offset = offset.max(end);
        }
        offsets[i] = offset;
        arena = arena.max(offset + round(me.bytes));
        placed.push(i);
    }
    (offsets, arena)
}
