//! Per-query selection state of a scan: the k best (score, index) pairs, the cut below which a
//! score is dropped without further work, the quantized-scan candidate list, and the online
//! log-sum-exp.
//!
//! Order: a hit is better when its score is higher, or equal with a lower index. Rows of one
//! chunk arrive in increasing index order, so within a chunk `score > cut` (strict) decides
//! exactly; chunks are merged with the full order.
//!
//! Quantized scans keep every hit with approximate score `a > h - 2m` where `h` is the k-th best
//! approximate score so far and `m` bounds |exact - approximate| for this query: the true top-k
//! (by exact score) is always inside that set (see `gallery.rs`).
//!
//! Log-sum-exp: the running pair (M, S) with lse = M + ln S, updated per tile from the tile's
//! reference score and its Σ exp, rescaling S when M rises (f64).

use std::cmp::Ordering;

/// One result: score and gallery row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    pub s: f32,
    pub i: u32,
}

/// `a` ranks before `b`: higher score, then lower index.
#[inline]
pub fn better(a: &Hit, b: &Hit) -> bool {
    a.s > b.s || (a.s == b.s && a.i < b.i)
}

/// Total order for sorting hits best first (scores are finite when this is used).
pub fn rank(a: &Hit, b: &Hit) -> Ordering {
    b.s.partial_cmp(&a.s).unwrap_or(Ordering::Equal).then(a.i.cmp(&b.i))
}

/// The k best hits seen so far: a binary heap whose root is the worst kept hit.
#[derive(Clone, Debug)]
pub struct TopK {
    k: usize,
    heap: Vec<Hit>,
}

impl TopK {
    pub fn new(k: usize, expected: usize) -> Self {
        TopK { k, heap: Vec::with_capacity(k.min(expected)) }
    }

    #[inline]
    pub fn is_full(&self) -> bool {
        self.heap.len() >= self.k
    }

    /// The worst kept hit once full.
    #[inline]
    pub fn worst(&self) -> Option<&Hit> {
        if self.is_full() {
            self.heap.first()
        } else {
            None
        }
    }

    /// Insert `h` if it belongs among the k best; true if the set changed.
    #[inline]
    pub fn offer(&mut self, h: Hit) -> bool {
        if self.heap.len() < self.k {
            self.heap.push(h);
            self.sift_up(self.heap.len() - 1);
            true
        } else if self.k > 0 && better(&h, &self.heap[0]) {
            self.heap[0] = h;
            self.sift_down(0);
            true
        } else {
            false
        }
    }

    fn sift_up(&mut self, mut c: usize) {
        while c > 0 {
            let p = (c - 1) / 2;
            if better(&self.heap[p], &self.heap[c]) {
                self.heap.swap(p, c);
                c = p;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut p: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * p + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            // The worse child goes up.
            let w = if r < n && better(&self.heap[l], &self.heap[r]) { r } else { l };
            if better(&self.heap[p], &self.heap[w]) {
                self.heap.swap(p, w);
                p = w;
            } else {
                break;
            }
        }
    }

    pub fn into_vec(self) -> Vec<Hit> {
        self.heap
    }
}

/// The k best of `hits`, best first.
pub fn best_k(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    if hits.len() > k {
        if k == 0 {
            return Vec::new();
        }
        hits.select_nth_unstable_by(k - 1, rank);
        hits.truncate(k);
    }
    hits.sort_unstable_by(rank);
    hits
}

/// Online log-sum-exp accumulator: lse = m + ln(s).
#[derive(Clone, Copy, Debug)]
pub struct Lse {
    pub m: f64,
    pub s: f64,
}

impl Default for Lse {
    fn default() -> Self {
        Lse { m: f64::NEG_INFINITY, s: 0.0 }
    }
}

impl Lse {
    /// Add a block whose terms sum to `s · exp(m)`.
    #[inline]
    pub fn add(&mut self, m: f64, s: f64) {
        if s <= 0.0 {
            return;
        }
        if self.s <= 0.0 {
            self.m = m;
            self.s = s;
        } else if m > self.m {
            self.s = self.s * (self.m - m).exp() + s;
            self.m = m;
        } else {
            self.s += s * (m - self.m).exp();
        }
    }

    pub fn value(&self) -> f64 {
        self.m + self.s.ln()
    }
}

/// Selection state of one query over one chunk of gallery rows.
#[derive(Clone, Debug)]
pub struct QState {
    pub top: TopK,
    /// Scores must exceed this to be looked at (−inf until k hits are held).
    pub cut: f32,
    /// 2m of the quantized scan (0 for exact scans).
    margin2: f64,
    /// Candidates (quantized scans only).
    pub cands: Vec<Hit>,
    collect: bool,
    pub overflow: bool,
    compact_at: usize,
    cap: usize,
    pub lse: Lse,
    pub bad: bool,
}

/// The largest f32 strictly below `x` (for finite x).
fn next_down(x: f32) -> f32 {
    if x.is_nan() || x == f32::NEG_INFINITY {
        return x;
    }
    if x == 0.0 {
        return -f32::from_bits(1);
    }
    let b = x.to_bits();
    f32::from_bits(if x > 0.0 { b - 1 } else { b + 1 })
}

/// An f32 strictly below the real number `h − margin2`: `a > cut_below(h, 2m)` holds for every
/// f32 `a >= h − 2m`.
pub fn cut_below(h: f32, margin2: f64) -> f32 {
    next_down((h as f64 - margin2) as f32)
}

impl QState {
    /// `margin2 = None`: exact scan. `Some(2m)`: quantized scan collecting candidates; a chunk
    /// that would hold more than `cap` candidates marks the query for an exact rescan instead.
    pub fn new(k: usize, margin2: Option<f64>, rows: usize) -> Self {
        let collect = margin2.is_some();
        let cap = 2 * k + rows / 8 + 64;
        QState {
            top: TopK::new(k, rows),
            cut: f32::NEG_INFINITY,
            margin2: margin2.unwrap_or(0.0),
            cands: Vec::new(),
            collect,
            overflow: false,
            compact_at: (4 * k + 64).min(cap + 1),
            cap,
            lse: Lse::default(),
            bad: false,
        }
    }

    fn cut_for(&self) -> f32 {
        match self.top.worst() {
            None => f32::NEG_INFINITY,
            // Exact scans, and quantized ones already marked for an exact rescan.
            Some(h) if !self.collect => h.s,
            Some(h) => cut_below(h.s, self.margin2),
        }
    }

    /// Slow path of the scan: `s > self.cut` held when called.
    #[inline]
    pub fn accept(&mut self, s: f32, i: u32) {
        let h = Hit { s, i };
        if self.collect {
            self.cands.push(h);
            if self.cands.len() >= self.compact_at {
                self.compact();
            }
        }
        if self.top.offer(h) {
            self.cut = self.cut_for();
        }
    }

    fn compact(&mut self) {
        let cut = self.cut;
        self.cands.retain(|c| c.s > cut);
        if self.cands.len() > self.cap {
            // Too many near-ties for the bound: rescan this query exactly.
            self.overflow = true;
            self.collect = false;
            self.cands = Vec::new();
            // Keep the heap only for the threshold; the rescan decides.
        } else {
            self.compact_at = (2 * self.cands.len() + 64).min(self.cap + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topk_keeps_best_with_index_ties() {
        let mut t = TopK::new(3, 10);
        for (i, s) in [1.0, 3.0, 3.0, 2.0, 3.0, 0.5].iter().enumerate() {
            t.offer(Hit { s: *s, i: i as u32 });
        }
        let got = best_k(t.into_vec(), 3);
        let idx: Vec<u32> = got.iter().map(|h| h.i).collect();
        assert_eq!(idx, vec![1, 2, 4]);
        // A lower index with an equal score displaces the worst on merge.
        let mut t = TopK::new(2, 4);
        t.offer(Hit { s: 1.0, i: 5 });
        t.offer(Hit { s: 1.0, i: 7 });
        assert!(t.offer(Hit { s: 1.0, i: 2 }));
        assert!(!t.offer(Hit { s: 1.0, i: 9 }));
        let idx: Vec<u32> = best_k(t.into_vec(), 2).iter().map(|h| h.i).collect();
        assert_eq!(idx, vec![2, 5]);
    }

    #[test]
    fn heap_matches_sort_on_random_input() {
        let mut x = 12345u64;
        let mut all = Vec::new();
        let mut t = TopK::new(17, 1000);
        for i in 0..1000u32 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let s = ((x >> 40) % 50) as f32; // many ties
            let h = Hit { s, i };
            all.push(h);
            t.offer(h);
        }
        all.sort_by(rank);
        all.truncate(17);
        assert_eq!(best_k(t.into_vec(), 17), all);
    }

    #[test]
    fn lse_matches_direct_sum() {
        let mut l = Lse::default();
        l.add(3.0, 2.0);
        l.add(5.0, 1.5);
        l.add(-1.0, 4.0);
        let direct = (2.0 * 3f64.exp() + 1.5 * 5f64.exp() + 4.0 * (-1f64).exp()).ln();
        assert!((l.value() - direct).abs() < 1e-14);
    }

    #[test]
    fn next_down_is_strictly_below() {
        for x in [1.0f32, -1.0, 0.0, 1e-30, -3.0e38] {
            let y = next_down(x);
            assert!(y < x);
        }
    }
}
