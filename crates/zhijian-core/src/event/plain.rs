//! A decoder for the shape nearly every event has: one flat JSON object
//! whose values are strings without escapes, unsigned integers, booleans
//! or null. It accepts only input that serde (the [`Wire`] derive) accepts,
//! and gives the same [`Wire`] for it; anything else is `None`, and serde
//! decides (with its own messages).

use super::Wire;
use std::borrow::Cow;

struct Bytes<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

/// The names of [`Wire`]'s fields, as serde knows them.
pub(super) const FIELDS: [&str; 11] = [
    "conversation_id",
    "type",
    "seq",
    "speaker",
    "text",
    "tenant",
    "channel",
    "agent_id",
    "ts_ms",
    "final",
    "continued",
];

/// What a field holds, as the decoder sees it.
enum Value<'a> {
    Str(&'a str),
    Uint(u64),
    Bool(bool),
    Null,
}

/// The index of the first `"`, `\\` or control character (below
/// 0x20) in `b`, eight bytes at a time.
pub(super) fn string_end(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        let v = u64::from_le_bytes(word);
        // A byte is flagged when it is zero after the XOR (a quote or a
        // backslash) or below 0x20; a borrow can only flag bytes after
        // the first true one, so the lowest flag is exact.
        let quote = v ^ (ONES * u64::from(b'"'));
        let slash = v ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote
            | slash.wrapping_sub(ONES) & !slash
            | v.wrapping_sub(ONES * 0x20) & !v)
            & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| at + i)
}

impl<'a> Bytes<'a> {
    /// JSON's whitespace, as serde_json skips it.
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn next(&mut self) -> Option<u8> {
        let c = *self.b.get(self.i)?;
        self.i += 1;
        Some(c)
    }

    /// A string with no escape and no control character, after its
    /// opening quote.
    fn str_body(&mut self) -> Option<&'a str> {
        let start = self.i;
        let end = start + string_end(self.b.get(start..)?)?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        // Both ends are ASCII, so both are character boundaries.
        self.s.get(start..end)
    }

    /// A field name, after its opening quote: the index of a [`FIELDS`]
    /// name, compared in place, or `None` for another name (read as a
    /// string, and ignored).
    fn key(&mut self) -> Option<Option<usize>> {
        let rest = self.b.get(self.i..)?;
        for (i, name) in FIELDS.iter().enumerate() {
            let n = name.len();
            if rest.get(n) == Some(&b'"') && rest.starts_with(name.as_bytes()) {
                self.i += n + 1;
                return Some(Some(i));
            }
        }
        self.str_body().map(|_| None)
    }

    /// An unsigned integer as serde_json reads one into a `u64`: no
    /// sign, no leading zero, no fraction or exponent, no overflow.
    fn uint(&mut self, first: u8) -> Option<u64> {
        let mut n = u64::from(first - b'0');
        if first == b'0' {
            if let Some(b'0'..=b'9') = self.b.get(self.i) {
                return None;
            }
        } else {
            while let Some(&c @ b'0'..=b'9') = self.b.get(self.i) {
                n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
                self.i += 1;
            }
        }
        match self.b.get(self.i) {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(n),
        }
    }

    fn word(&mut self, rest: &[u8]) -> Option<()> {
        let got = self.b.get(self.i..self.i + rest.len())?;
        (got == rest).then(|| self.i += rest.len())
    }

    fn value(&mut self) -> Option<Value<'a>> {
        match self.next()? {
            b'"' => self.str_body().map(Value::Str),
            c @ b'0'..=b'9' => self.uint(c).map(Value::Uint),
            b't' => self.word(b"rue").map(|()| Value::Bool(true)),
            b'f' => self.word(b"alse").map(|()| Value::Bool(false)),
            b'n' => self.word(b"ull").map(|()| Value::Null),
            _ => None,
        }
    }
}

fn text(v: Value<'_>) -> Option<Option<Cow<'_, str>>> {
    match v {
        Value::Str(s) => Some(Some(Cow::Borrowed(s))),
        Value::Null => Some(None),
        _ => None,
    }
}

fn uint(v: Value<'_>) -> Option<Option<u64>> {
    match v {
        Value::Uint(n) => Some(Some(n)),
        Value::Null => Some(None),
        _ => None,
    }
}

fn boolean(v: Value<'_>) -> Option<Option<bool>> {
    match v {
        Value::Bool(b) => Some(Some(b)),
        Value::Null => Some(None),
        _ => None,
    }
}

/// [`wire_str`] of bytes: `None` when they are not UTF-8.
pub(super) fn wire(b: &[u8]) -> Option<Wire<'_>> {
    wire_str(std::str::from_utf8(b).ok()?)
}

pub(super) fn wire_str(s: &str) -> Option<Wire<'_>> {
    let b = s.as_bytes();
    let mut p = Bytes { s, b, i: 0 };
    let mut w = Wire::default();
    // One bit per known field: serde rejects a field given twice.
    let mut seen = 0u16;
    p.ws();
    if p.next()? != b'{' {
        return None;
    }
    p.ws();
    if b.get(p.i) == Some(&b'}') {
        p.i += 1;
    } else {
        loop {
            if p.next()? != b'"' {
                return None;
            }
            let field = p.key()?;
            p.ws();
            if p.next()? != b':' {
                return None;
            }
            p.ws();
            let v = p.value()?;
            let bit = match field {
                Some(0) => {
                    w.conversation_id = text(v)?;
                    Some(0)
                }
                Some(1) => {
                    w.kind = text(v)?;
                    Some(1)
                }
                Some(2) => {
                    w.seq = uint(v)?;
                    Some(2)
                }
                Some(3) => {
                    w.speaker = text(v)?;
                    Some(3)
                }
                Some(4) => {
                    w.text = text(v)?;
                    Some(4)
                }
                Some(5) => {
                    w.tenant = text(v)?;
                    Some(5)
                }
                Some(6) => {
                    w.channel = text(v)?;
                    Some(6)
                }
                Some(7) => {
                    w.agent_id = text(v)?;
                    Some(7)
                }
                Some(8) => {
                    w.ts_ms = uint(v)?;
                    Some(8)
                }
                Some(9) => {
                    w.is_final = boolean(v)?;
                    Some(9)
                }
                Some(10) => {
                    w.continued = boolean(v)?;
                    Some(10)
                }
                // Ignored, as serde ignores unknown fields.
                _ => None,
            };
            if let Some(bit) = bit {
                if seen & (1 << bit) != 0 {
                    return None;
                }
                seen |= 1 << bit;
            }
            p.ws();
            match p.next()? {
                b',' => p.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    p.ws();
    (p.i == b.len()).then_some(w)
}
