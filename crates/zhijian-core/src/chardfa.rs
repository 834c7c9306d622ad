//! A character-level Aho-Corasick DFA over the lexicon's own alphabet, run
//! while the utterance is being normalised.
//!
//! Why not the bytes of the normalised text: a Chinese character is three
//! UTF-8 bytes, so a byte automaton makes three dependent transitions per
//! character through a table of some hundred kilobytes, and that chain of
//! loads was a third of the scanning time (perf). Here every character the
//! patterns use gets a symbol (1..=K), every other character is symbol 0
//! (it can only lead back to the root), and one transition per character
//! goes through a dense `states × (K+1)` table whose hot rows (root and
//! shallow states) stay in L1.
//!
//! The table is dense, so it is built only while it stays small
//! ([`MAX_CELLS`]); a lexicon of tens of thousands of phrases uses the byte
//! automaton instead (see `matcher`).

use std::collections::{HashMap, VecDeque};

/// Largest transition table built (cells of 2 bytes: 8 MiB).
pub(crate) const MAX_CELLS: usize = 1 << 22;

/// A state is its row index; this bit marks a state with outputs (some
/// pattern ends there). Rows are u16 so the table is half the size (it has
/// to fit in L2 cache: the transitions form a chain of dependent loads).
const MATCH: u16 = 1 << 15;

pub struct CharDfa {
    /// BMP character → symbol (0: in no pattern). A direct table (128 KiB):
    /// tried instead, a collision-free hash table small enough for L1 was
    /// slower (the loads here do not depend on the state, so the CPU
    /// overlaps their misses; the hash's arithmetic it cannot hide).
    bmp: Box<[u16]>,
    /// Characters outside the BMP that patterns use.
    astral: HashMap<char, u16>,
    /// Symbols per row: K + 1.
    stride: usize,
    /// `trans[row * stride + symbol]`: the next row, [`MATCH`]-tagged.
    trans: Vec<u16>,
    /// Row index → range of `outputs` (patterns ending in that state,
    /// including through fail links).
    out_ranges: Vec<(u32, u32)>,
    outputs: Vec<u32>,
}

impl CharDfa {
    /// Builds the automaton of `patterns` (non-empty normalised strings), or
    /// `None` if its table would exceed [`MAX_CELLS`].
    pub fn new(patterns: &[String]) -> Option<CharDfa> {
        let mut symbols: HashMap<char, u16> = HashMap::new();
        for c in patterns.iter().flat_map(|p| p.chars()) {
            let next = symbols.len() + 1;
            if let std::collections::hash_map::Entry::Vacant(v) = symbols.entry(c) {
                v.insert(u16::try_from(next).ok()?);
            }
        }
        let stride = symbols.len() + 1;
        let trie_nodes = 1 + patterns.iter().map(|p| p.chars().count()).sum::<usize>();
        if trie_nodes.checked_mul(stride)? > MAX_CELLS {
            return None;
        }
        const NONE: u32 = u32::MAX;
        // The trie, rows of `stride`, row index (not premultiplied) values.
        let mut goto: Vec<u32> = vec![NONE; stride];
        let mut own: Vec<Vec<u32>> = vec![Vec::new()];
        for (pid, p) in patterns.iter().enumerate() {
            let mut s = 0usize;
            for c in p.chars() {
                let sym = usize::from(symbols[&c]);
                let next = goto[s * stride + sym];
                s = if next == NONE {
                    let n = own.len();
                    goto.extend(std::iter::repeat_n(NONE, stride));
                    own.push(Vec::new());
                    goto[s * stride + sym] = n as u32;
                    n
                } else {
                    next as usize
                };
            }
            own[s].push(pid as u32);
        }
        let rows = own.len();
        // Breadth first: fail links, complete transitions, inherited outputs.
        let mut fail = vec![0usize; rows];
        let mut outs: Vec<Vec<u32>> = own;
        let mut queue = VecDeque::new();
        for next in &mut goto[..stride] {
            match *next {
                NONE => *next = 0,
                child => queue.push_back(child as usize),
            }
        }
        while let Some(s) = queue.pop_front() {
            let inherited = outs[fail[s]].clone();
            outs[s].extend(inherited);
            for sym in 0..stride {
                let via_fail = goto[fail[s] * stride + sym];
                match goto[s * stride + sym] {
                    NONE => goto[s * stride + sym] = via_fail,
                    child => {
                        fail[child as usize] = via_fail as usize;
                        queue.push_back(child as usize);
                    }
                }
            }
        }
        if rows > usize::from(!MATCH) {
            return None;
        }
        let id = |row: usize| -> u16 {
            if outs[row].is_empty() {
                row as u16
            } else {
                row as u16 | MATCH
            }
        };
        let trans: Vec<u16> = goto.iter().map(|&row| id(row as usize)).collect();
        let mut outputs = Vec::new();
        let out_ranges = outs
            .iter()
            .map(|o| {
                let start = outputs.len() as u32;
                outputs.extend_from_slice(o);
                (start, outputs.len() as u32)
            })
            .collect();
        let mut bmp = vec![0u16; 0x10000].into_boxed_slice();
        let mut astral = HashMap::new();
        for (&c, &sym) in &symbols {
            match bmp.get_mut(c as usize) {
                Some(slot) => *slot = sym,
                None => {
                    astral.insert(c, sym);
                }
            }
        }
        Some(CharDfa {
            bmp,
            astral,
            stride,
            trans,
            out_ranges,
            outputs,
        })
    }

    /// The start state.
    #[inline]
    pub fn start(&self) -> u32 {
        0
    }

    /// The state after reading (normalised) character `c`.
    #[inline]
    pub fn next(&self, state: u32, c: char) -> u32 {
        let sym = match self.bmp.get(c as usize) {
            Some(&s) => s,
            None => self.astral.get(&c).copied().unwrap_or(0),
        };
        // In bounds by construction: every state is a row and
        // `sym < stride`.
        u32::from(
            self.trans[(state as usize & usize::from(!MATCH)) * self.stride + usize::from(sym)],
        )
    }

    /// Whether some pattern ends in `state`.
    #[inline]
    pub(crate) fn is_match(state: u32) -> bool {
        state & u32::from(MATCH) != 0
    }

    /// The patterns that end in `state`.
    pub fn matches(&self, state: u32) -> &[u32] {
        let (a, b) = self.out_ranges[state as usize & usize::from(!MATCH)];
        &self.outputs[a as usize..b as usize]
    }

    /// States, symbols (with the "other" symbol 0) and table size in bytes.
    pub fn size(&self) -> (usize, usize, usize) {
        (
            self.trans.len() / self.stride,
            self.stride,
            self.trans.len() * 2,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (start char, end char, pattern) occurrence, the slow way.
    fn naive(patterns: &[String], text: &str) -> Vec<(usize, usize, u32)> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        for end in 1..=chars.len() {
            for (pid, p) in patterns.iter().enumerate() {
                let pc: Vec<char> = p.chars().collect();
                if pc.len() <= end && chars[end - pc.len()..end] == pc[..] {
                    out.push((end - pc.len(), end, pid as u32));
                }
            }
        }
        out.sort_unstable();
        out
    }

    fn run(dfa: &CharDfa, patterns: &[String], text: &str) -> Vec<(usize, usize, u32)> {
        let mut s = dfa.start();
        let mut out = Vec::new();
        for (i, c) in text.chars().enumerate() {
            s = dfa.next(s, c);
            if CharDfa::is_match(s) {
                for &pid in dfa.matches(s) {
                    let n = patterns[pid as usize].chars().count();
                    out.push((i + 1 - n, i + 1, pid));
                }
            }
        }
        out.sort_unstable();
        out
    }

    #[test]
    fn finds_every_overlapping_occurrence() {
        let patterns: Vec<String> = [
            "你问我我问谁",
            "我问谁",
            "问",
            "不知道",
            "您不知道",
            "啊",
            "啊啊",
            "𠀀好",
        ]
        .map(String::from)
        .to_vec();
        let dfa = CharDfa::new(&patterns).expect("small");
        for text in [
            "你问我我问谁",
            "我也不知道您不知道啊啊啊",
            "问问问",
            "没有任何命中",
            "𠀀好𠀀好啊",
            "",
        ] {
            assert_eq!(run(&dfa, &patterns, text), naive(&patterns, text), "{text}");
        }
    }

    #[test]
    fn refuses_a_table_too_large() {
        let patterns: Vec<String> = (0..3000u32)
            .map(|i| {
                (0..800)
                    .map(|k| char::from_u32(0x4E00 + (i * 7 + k) % 20000).unwrap_or('一'))
                    .collect()
            })
            .collect();
        assert!(CharDfa::new(&patterns).is_none());
    }
}
