//! UDP GSO planning (sans-IO): the UDP datagrams of one send batch grouped per destination,
//! then cut into runs the kernel can send as one message and segment itself (`UDP_SEGMENT`,
//! Linux >= 4.18). `io::send_planned` sends a plan.
//!
//! - Grouping: each destination's datagrams together, in their original order (so the order
//!   per destination is the router's order); destinations in order of first appearance. The
//!   router emits packet-major (one producer packet to every consumer, then the next), so a
//!   burst to one consumer is spread over the batch until grouped here.
//! - Runs: consecutive datagrams of one destination with the size of the run's first one
//!   (the segment size); a shorter datagram may end a run (the kernel's rule: every segment
//!   has the segment size except the last), a longer one starts the next. At most
//!   `MAX_SEGMENTS` datagrams and `MAX_RUN_BYTES` bytes per run. A run of one datagram is sent
//!   as a plain datagram.

use std::collections::HashMap;
use std::net::SocketAddr;

/// The kernel's limit on segments per GSO message (`UDP_MAX_SEGMENTS`).
pub const MAX_SEGMENTS: usize = 64;
/// Bytes of payload per GSO message: the whole message is one UDP datagram to the stack
/// before segmentation, so under 65,535 minus the IPv6/IPv4 and UDP headers.
pub const MAX_RUN_BYTES: usize = 65_000;

/// Datagrams `order[start..start + len]` of one destination, to go as one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub start: u32,
    pub len: u32,
    /// Size of every datagram of the run but the last (which may be shorter).
    pub segment: u32,
}

/// Reusable buffers for planning (no allocation per batch once warm).
#[derive(Default)]
pub struct Planner {
    /// Destination → group number (first appearance order). Keyed by remote addresses, so
    /// std's keyed hasher; only proven tuples are ever sent to.
    groups: HashMap<SocketAddr, u32>,
    /// Per planned datagram: (caller's index, length, group).
    entries: Vec<(u32, u32, u32)>,
    /// Datagrams per group, then the next free position of each group in `order`.
    fill: Vec<u32>,
    /// Caller's indices, destination-major.
    order: Vec<u32>,
    /// Lengths, in `order`'s order.
    lens: Vec<u32>,
    runs: Vec<Run>,
}

impl Planner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Plan `items` (caller's index, destination, length), in send order. Afterwards `order`
    /// is the caller's indices grouped per destination and `runs` cut it into messages.
    pub fn plan(&mut self, items: impl Iterator<Item = (usize, SocketAddr, usize)>) {
        self.groups.clear();
        self.entries.clear();
        self.fill.clear();
        self.order.clear();
        self.runs.clear();
        for (index, dest, len) in items {
            let next = self.groups.len() as u32;
            let g = *self.groups.entry(dest).or_insert(next);
            if g == next {
                self.fill.push(0);
            }
            self.fill[g as usize] += 1;
            self.entries.push((index as u32, len as u32, g));
        }
        // Counts → start of each group in `order` (exclusive prefix sum).
        let mut at = 0u32;
        for f in self.fill.iter_mut() {
            let count = *f;
            *f = at;
            at += count;
        }
        self.order.resize(self.entries.len(), 0);
        self.lens.resize(self.entries.len(), 0);
        for &(index, len, g) in &self.entries {
            let pos = self.fill[g as usize] as usize;
            self.order[pos] = index;
            self.lens[pos] = len;
            self.fill[g as usize] += 1;
        }
        // `fill[g]` is now the end of group g; groups are contiguous and in order.
        let mut start = 0usize;
        for &end in &self.fill {
            cut_runs(&self.lens[start..end as usize], start, &mut self.runs);
            start = end as usize;
        }
    }

    /// The caller's indices of the last plan, grouped per destination.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// The messages of the last plan, over `order()`.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }
}

/// Cut one destination's datagram lengths (`lens`, starting at `base` in `order`) into runs.
fn cut_runs(lens: &[u32], base: usize, runs: &mut Vec<Run>) {
    let mut k = 0usize;
    while k < lens.len() {
        let segment = lens[k];
        let mut bytes = segment as usize;
        let mut j = k + 1;
        // An empty datagram cannot be a segment size: it goes alone.
        if segment > 0 {
            while j < lens.len() && j - k < MAX_SEGMENTS {
                let l = lens[j];
                if l > segment || l == 0 || bytes + l as usize > MAX_RUN_BYTES {
                    break;
                }
                bytes += l as usize;
                j += 1;
                if l < segment {
                    break; // a shorter one ends the run
                }
            }
        }
        runs.push(Run { start: (base + k) as u32, len: (j - k) as u32, segment });
        k = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Plan (dest port, len) items; return per run (dest port, lens) as sent.
    fn plan(items: &[(u16, usize)]) -> Vec<(u16, Vec<usize>)> {
        let mut p = Planner::new();
        p.plan(items.iter().enumerate().map(|(i, &(port, len))| (i, addr(port), len)));
        assert_eq!(p.order().len(), items.len());
        let mut out = Vec::new();
        for r in p.runs() {
            let idx = &p.order()[r.start as usize..(r.start + r.len) as usize];
            let port = items[idx[0] as usize].0;
            let lens: Vec<usize> = idx.iter().map(|&i| items[i as usize].1).collect();
            assert!(idx.iter().all(|&i| items[i as usize].0 == port), "a run has one destination");
            assert_eq!(r.segment as usize, lens[0]);
            out.push((port, lens));
        }
        out
    }

    #[test]
    fn groups_per_destination_keeping_order() {
        // Packet-major: 3 packets to consumers 1, 2, 3 (sizes differ per consumer: its own
        // extensions), as the router emits them.
        let items = [(1, 100), (2, 104), (3, 108), (1, 100), (2, 104), (3, 108), (1, 90), (2, 94), (3, 98)];
        let mut p = Planner::new();
        p.plan(items.iter().enumerate().map(|(i, &(port, len))| (i, addr(port), len)));
        assert_eq!(p.order(), &[0, 3, 6, 1, 4, 7, 2, 5, 8]);
        assert_eq!(
            plan(&items),
            vec![(1, vec![100, 100, 90]), (2, vec![104, 104, 94]), (3, vec![108, 108, 98])]
        );
    }

    #[test]
    fn runs_follow_the_kernel_size_rule() {
        // Equal sizes, a shorter one ends a run, a longer one starts the next; a run of one.
        let items = [(1, 500), (1, 500), (1, 400), (1, 400), (1, 600), (1, 600), (1, 100), (1, 700)];
        assert_eq!(
            plan(&items),
            vec![(1, vec![500, 500, 400]), (1, vec![400]), (1, vec![600, 600, 100]), (1, vec![700])]
        );
        // Audio between video packets of one destination breaks the video run (order kept).
        let items = [(7, 1200), (7, 1200), (7, 120), (7, 1200), (7, 1200)];
        assert_eq!(plan(&items), vec![(7, vec![1200, 1200, 120]), (7, vec![1200, 1200])]);
        // Chromium-like near-equal packetization: one byte larger first.
        let items = [(7, 1101), (7, 1101), (7, 1100), (7, 1100), (7, 1100)];
        assert_eq!(plan(&items), vec![(7, vec![1101, 1101, 1100]), (7, vec![1100, 1100])]);
        // Empty datagrams go alone.
        assert_eq!(plan(&[(1, 0), (1, 0), (1, 5)]), vec![(1, vec![0]), (1, vec![0]), (1, vec![5])]);
    }

    #[test]
    fn runs_are_capped_in_segments_and_bytes() {
        let items: Vec<(u16, usize)> = vec![(1, 100); 150];
        let runs = plan(&items);
        assert_eq!(runs.iter().map(|r| r.1.len()).collect::<Vec<_>>(), vec![64, 64, 22]);
        let items: Vec<(u16, usize)> = vec![(1, 1400); 100];
        let runs = plan(&items);
        let per = MAX_RUN_BYTES / 1400; // 46
        assert!(runs.iter().all(|r| r.1.len() <= per && r.1.iter().sum::<usize>() <= MAX_RUN_BYTES));
        assert_eq!(runs.iter().map(|r| r.1.len()).sum::<usize>(), 100);
        assert_eq!(runs[0].1.len(), per);
    }

    #[test]
    fn caller_indices_are_kept_and_planner_is_reusable() {
        let mut p = Planner::new();
        // Sparse caller indices (TCP transmits filtered out by the caller).
        p.plan([(0, addr(1), 10), (2, addr(2), 10), (5, addr(1), 10)].into_iter());
        assert_eq!(p.order(), &[0, 5, 2]);
        assert_eq!(p.runs(), &[Run { start: 0, len: 2, segment: 10 }, Run { start: 2, len: 1, segment: 10 }]);
        p.plan(std::iter::empty());
        assert!(p.order().is_empty() && p.runs().is_empty());
        p.plan([(0, addr(9), 3)].into_iter());
        assert_eq!(p.order(), &[0]);
        assert_eq!(p.runs(), &[Run { start: 0, len: 1, segment: 3 }]);
    }
}
