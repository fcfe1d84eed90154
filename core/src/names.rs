//! Many names in one buffer. A directory of ten million entries, listed by the backup's
//! walk or remembered by a restore, costs the names' bytes and 8 bytes of offset each,
//! not an allocation and a pointer (or a hash-table slot) each.

/// A list of names (byte strings) in one buffer.
pub struct Names {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    /// Whether every name so far came after the one before it, bytewise.
    sorted: bool,
}

impl Default for Names {
    fn default() -> Self {
        Names::new()
    }
}

impl Names {
    pub fn new() -> Self {
        Names {
            bytes: Vec::new(),
            ends: Vec::new(),
            sorted: true,
        }
    }

    pub fn push(&mut self, name: &[u8]) {
        let n = self.ends.len();
        if n > 0 && self.get(n - 1) >= name {
            self.sorted = false;
        }
        self.bytes.extend_from_slice(name);
        self.ends.push(self.bytes.len());
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The `i`-th name.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Puts the names in bytewise order (nothing to do when they came in it; otherwise the
    /// buffer is rebuilt once, holding twice the names for a moment).
    pub fn sort(&mut self) {
        if self.sorted {
            return;
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_unstable_by(|&a, &b| self.get(a).cmp(self.get(b)));
        let mut sorted = Names::new();
        sorted.bytes.reserve(self.bytes.len());
        sorted.ends.reserve(self.len());
        for i in order {
            sorted.push(self.get(i));
        }
        *self = sorted;
    }

    /// Whether `name` is one of the names. They must be sorted ([`Names::sort`]).
    pub fn contains(&self, name: &[u8]) -> bool {
        assert!(self.sorted, "Names::contains on names not sorted");
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid).cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn names_sort_bytewise_and_are_found_whether_they_came_sorted_or_not() {
        let sorted = ["", "a", "a.b", "b", "z", "\u{e9}t\u{e9}"];
        for names in [
            sorted.to_vec(),
            vec!["z", "a", "b", "\u{e9}t\u{e9}", "a.b", ""],
        ] {
            let mut set = Names::new();
            for n in &names {
                set.push(n.as_bytes());
            }
            set.sort();
            let got: Vec<&[u8]> = (0..set.len()).map(|i| set.get(i)).collect();
            let want: Vec<&[u8]> = sorted.iter().map(|n| n.as_bytes()).collect();
            assert_eq!(got, want);
            for n in &names {
                assert!(set.contains(n.as_bytes()), "{n:?} in {names:?}");
            }
            for absent in ["a.", "aa", "c", "zz", "\u{e9}"] {
                assert!(!set.contains(absent.as_bytes()), "{absent:?} in {names:?}");
            }
        }
    }
}
