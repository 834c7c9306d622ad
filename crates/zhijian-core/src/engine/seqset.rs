//! The set of segment sequence numbers a conversation has seen: a few runs
//! inline, a map beyond.

use super::*;

/// The set of seqs seen in a conversation: sorted, disjoint runs of
/// consecutive seqs (`first..=last`), where no two runs touch (a run ending
/// at `n` and one starting at `n + 1` are merged). Seqs nearly always arrive
/// in increasing order, so the usual conversation is one run of 16 bytes
/// whatever its length. Up to [`FEW_RUNS`] runs live in a small sorted
/// `Vec` (a `BTreeMap` node costs ~200 bytes, which is most of a closed
/// conversation's tombstone); past that a `BTreeMap`, so any arrival order
/// costs O(log runs) per insert (a sorted `Vec` of seqs made descending seqs
/// quadratic).
///
/// Serialized (saved state) as a JSON array whose items are a seq (a run of
/// one) or a `[first, last]` pair: an array of plain seqs, the format of
/// older versions, loads unchanged.
#[derive(Debug, Clone)]
pub struct SeqSet {
    runs: Runs,
}

/// Runs held in a `Vec` at most; more move to a `BTreeMap`.
pub(crate) const FEW_RUNS: usize = 8;

#[derive(Debug, Clone)]
enum Runs {
    Few(Vec<(u64, u64)>),
    Many(BTreeMap<u64, u64>),
}

impl Default for SeqSet {
    fn default() -> Self {
        SeqSet {
            runs: Runs::Few(Vec::new()),
        }
    }
}

impl PartialEq for SeqSet {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SeqSet {}

impl SeqSet {
    /// Adds `seq`; false if it was already present.
    pub fn insert(&mut self, seq: u64) -> bool {
        let v = match &mut self.runs {
            Runs::Few(v) => v,
            Runs::Many(m) => return insert_many(m, seq),
        };
        // The first run starting after `seq`.
        let i = v.partition_point(|&(first, _)| first <= seq);
        let joins_left = match i.checked_sub(1).map(|j| v[j]) {
            Some((_, last)) if last >= seq => return false,
            Some((_, last)) => last + 1 == seq,
            None => false,
        };
        let joins_right = v
            .get(i)
            .is_some_and(|&(first, _)| seq.checked_add(1) == Some(first));
        match (joins_left, joins_right) {
            (true, true) => {
                v[i - 1].1 = v[i].1;
                v.remove(i);
            }
            (true, false) => v[i - 1].1 = seq,
            (false, true) => v[i].0 = seq,
            (false, false) => {
                if v.is_empty() {
                    // One run is the usual whole conversation: no spare.
                    v.reserve_exact(1);
                }
                v.insert(i, (seq, seq));
                if v.len() > FEW_RUNS {
                    self.runs = Runs::Many(v.iter().copied().collect());
                }
            }
        }
        true
    }

    /// Whether `seq` was inserted.
    pub fn contains(&self, seq: u64) -> bool {
        match &self.runs {
            Runs::Few(v) => {
                let i = v.partition_point(|&(first, _)| first <= seq);
                i > 0 && v[i - 1].1 >= seq
            }
            Runs::Many(m) => m
                .range(..=seq)
                .next_back()
                .is_some_and(|(_, &last)| last >= seq),
        }
    }

    /// Number of runs of consecutive seqs (what the set's memory grows with).
    pub fn runs(&self) -> usize {
        match &self.runs {
            Runs::Few(v) => v.len(),
            Runs::Many(m) => m.len(),
        }
    }

    /// The runs, in order.
    fn iter(&self) -> Box<dyn Iterator<Item = (u64, u64)> + '_> {
        match &self.runs {
            Runs::Few(v) => Box::new(v.iter().copied()),
            Runs::Many(m) => Box::new(m.iter().map(|(&f, &l)| (f, l))),
        }
    }

    /// Adds every seq of `first..=last` (loading saved state, which may hold
    /// overlapping or unordered items if edited by hand). Works on the map;
    /// [`SeqSet::compact`] moves a small result back to the `Vec`.
    fn insert_run(&mut self, first: u64, last: u64) {
        if let Runs::Few(v) = &self.runs {
            self.runs = Runs::Many(v.iter().copied().collect());
        }
        let Runs::Many(runs) = &mut self.runs else {
            return;
        };
        let (first, last) = (first.min(last), first.max(last));
        let mut new_first = first;
        let mut new_last = last;
        // Absorb every run that overlaps or touches `first..=last`: the one
        // starting before `first` and all starting within `first..=last+1`.
        if let Some((&f, &l)) = runs.range(..first).next_back()
            && l.saturating_add(1) >= first
        {
            new_first = f;
            new_last = new_last.max(l);
            runs.remove(&f);
        }
        let upper = last.saturating_add(1);
        while let Some((&f, &l)) = runs.range(first..=upper).next() {
            new_last = new_last.max(l);
            runs.remove(&f);
        }
        runs.insert(new_first, new_last);
    }

    /// Back to the `Vec` when few runs are left.
    fn compact(&mut self) {
        if let Runs::Many(m) = &self.runs
            && m.len() <= FEW_RUNS
        {
            let mut v = Vec::with_capacity(m.len());
            v.extend(m.iter().map(|(&f, &l)| (f, l)));
            self.runs = Runs::Few(v);
        }
    }
}

/// [`SeqSet::insert`] on the map form.
fn insert_many(runs: &mut BTreeMap<u64, u64>, seq: u64) -> bool {
    // The run starting at or before `seq`, if it reaches `seq` or ends
    // right before it.
    let mut joins_left = None;
    if let Some((&first, &last)) = runs.range(..=seq).next_back() {
        if last >= seq {
            return false;
        }
        if last + 1 == seq {
            joins_left = Some(first);
        }
    }
    // The run starting right after `seq`.
    let joins_right = seq
        .checked_add(1)
        .and_then(|next| runs.get(&next).map(|&last| (next, last)));
    match (joins_left, joins_right) {
        (Some(first), Some((next, last))) => {
            runs.remove(&next);
            runs.insert(first, last);
        }
        (Some(first), None) => {
            runs.insert(first, seq);
        }
        (None, Some((next, last))) => {
            runs.remove(&next);
            runs.insert(seq, last);
        }
        (None, None) => {
            runs.insert(seq, seq);
        }
    }
    true
}

impl Serialize for SeqSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.runs()))?;
        for (first, last) in self.iter() {
            if first == last {
                seq.serialize_element(&first)?;
            } else {
                seq.serialize_element(&[first, last])?;
            }
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for SeqSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// One item: a seq or a `[first, last]` run.
        struct Item(u64, u64);

        impl<'de> Deserialize<'de> for Item {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct ItemVisitor;
                impl<'de> serde::de::Visitor<'de> for ItemVisitor {
                    type Value = Item;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("a seq or a [first, last] pair of seqs")
                    }
                    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Item, E> {
                        Ok(Item(v, v))
                    }
                    fn visit_seq<A: serde::de::SeqAccess<'de>>(
                        self,
                        mut a: A,
                    ) -> Result<Item, A::Error> {
                        use serde::de::Error;
                        let first: u64 = a
                            .next_element()?
                            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                        let last: u64 = a
                            .next_element()?
                            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                        if a.next_element::<serde::de::IgnoredAny>()?.is_some() {
                            return Err(A::Error::invalid_length(3, &self));
                        }
                        Ok(Item(first, last))
                    }
                }
                d.deserialize_any(ItemVisitor)
            }
        }

        struct SetVisitor;
        impl<'de> serde::de::Visitor<'de> for SetVisitor {
            type Value = SeqSet;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of seqs and [first, last] pairs")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<SeqSet, A::Error> {
                let mut set = SeqSet::default();
                while let Some(Item(first, last)) = a.next_element()? {
                    set.insert_run(first, last);
                }
                set.compact();
                Ok(set)
            }
        }
        deserializer.deserialize_seq(SetVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set_moves_to_the_map_past_few_runs_and_compares_by_content() {
        let mut gappy = SeqSet::default();
        for q in (0..2 * (super::FEW_RUNS as u64 + 2)).step_by(2) {
            assert!(gappy.insert(q));
        }
        assert_eq!(gappy.runs(), super::FEW_RUNS + 2);
        assert!(matches!(gappy.runs, super::Runs::Many(_)));
        for q in (1..2 * (super::FEW_RUNS as u64 + 2)).step_by(2) {
            assert!(gappy.insert(q));
            assert!(!gappy.insert(q));
        }
        assert_eq!(gappy.runs(), 1);
        let mut plain = SeqSet::default();
        for q in 0..2 * (super::FEW_RUNS as u64 + 2) {
            plain.insert(q);
        }
        assert!(matches!(plain.runs, super::Runs::Few(_)));
        assert_eq!(gappy, plain);
        // Loading saved state gives the small form again.
        let json = serde_json::to_string(&gappy).expect("json");
        let back: SeqSet = serde_json::from_str(&json).expect("load");
        assert!(matches!(back.runs, super::Runs::Few(_)));
        assert_eq!(back, plain);
    }

    #[test]
    fn seq_set_descending_200k_is_one_run_and_exact() {
        const N: u64 = 200_000;
        let mut s = SeqSet::default();
        // Every other seq first (descending: 100k separate runs), then the
        // gaps (descending, each joining two runs).
        for q in (0..N).rev().filter(|q| q % 2 == 1) {
            assert!(s.insert(q), "{q} is new");
        }
        assert_eq!(s.runs(), (N / 2) as usize);
        assert!(!s.contains(0) && s.contains(1) && !s.contains(2));
        for q in (0..N).rev().filter(|q| q % 2 == 0) {
            assert!(s.insert(q), "{q} is new");
        }
        assert_eq!(s.runs(), 1, "all of 0..{N} merged into one run");
        for q in (0..N).rev() {
            assert!(!s.insert(q), "{q} is a repeat");
            assert!(s.contains(q));
        }
        assert!(!s.contains(N));
        assert!(s.insert(N));
        assert_eq!(s.runs(), 1);
    }

    #[test]
    fn seq_set_matches_a_btreeset_in_any_order() {
        use proptest::prelude::*;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = proptest::collection::vec(
            prop_oneof![0u64..64, Just(u64::MAX), Just(u64::MAX - 1), any::<u64>()],
            0..200,
        );
        runner
            .run(&strategy, |seqs| {
                let mut s = SeqSet::default();
                let mut model = std::collections::BTreeSet::new();
                for &q in &seqs {
                    prop_assert_eq!(s.insert(q), model.insert(q), "insert {}", q);
                }
                for q in (0..70).chain([u64::MAX, u64::MAX - 1, u64::MAX - 2]) {
                    prop_assert_eq!(s.contains(q), model.contains(&q), "contains {}", q);
                }
                for &q in &seqs {
                    prop_assert!(s.contains(q));
                }
                // Runs are disjoint, sorted and never touch.
                let runs: Vec<(u64, u64)> = s.iter().collect();
                for w in runs.windows(2) {
                    prop_assert!(w[0].1 < w[1].0 && w[0].1 + 1 < w[1].0, "{:?}", w);
                }
                let json =
                    serde_json::to_string(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let back: SeqSet =
                    serde_json::from_str(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&back, &s);
                // The older format (a plain array of seqs, any order) loads
                // to the same set.
                let old =
                    serde_json::to_string(&seqs).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let from_old: SeqSet =
                    serde_json::from_str(&old).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&from_old, &s);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn seq_set_serde_format() {
        let mut s = SeqSet::default();
        for q in [7, 0, 1, 2, 3, 9, 10] {
            s.insert(q);
        }
        let json = serde_json::to_string(&s).expect("serializes");
        assert_eq!(json, "[[0,3],7,[9,10]]");
        // Saved by an older version: a sorted array of seqs.
        let old: SeqSet = serde_json::from_str("[0,1,2,3,7,9,10]").expect("old format loads");
        assert_eq!(old, s);
        // Overlapping and unordered items (state edited by hand) merge.
        let messy: SeqSet = serde_json::from_str("[[9,10],[2,0],[1,3],7,10]").expect("loads");
        assert_eq!(messy, s);
        for bad in ["{}", "[-1]", "[[1]]", "[[1,2,3]]", "[\"1\"]", "[1.5]"] {
            assert!(serde_json::from_str::<SeqSet>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seq_set_handles_out_of_order_and_repeats() {
        let mut s = SeqSet::default();
        let inserted: Vec<bool> = [3, 5, 4, 5, 3, 0, 6].iter().map(|&q| s.insert(q)).collect();
        assert_eq!(inserted, vec![true, true, true, false, false, true, true]);
    }
}
