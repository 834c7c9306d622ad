//! The checks of what goes into a NATS subject: tenants, conversation ids,
//! configured prefixes. Written once, for the input contract, the lexicon's
//! tenant overlays, the configuration and the console.

/// `.`, `*` and `>`: the token separator and the wildcards.
pub fn is_subject_special(c: char) -> bool {
    matches!(c, '.' | '*' | '>')
}

/// Whitespace or a control character: in no id, tenant or token.
pub(crate) fn is_blank_or_control(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// One subject token (a tenant, a prefix of one token): not empty, no
/// whitespace, control characters, `.`, `*` or `>`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| is_blank_or_control(c) || is_subject_special(c))
}

/// The tail of a subject that may span tokens but never matches more than
/// itself in a filter (a conversation id): not empty, no whitespace,
/// control characters, `*` or `>`.
pub fn is_literal_tail(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| is_blank_or_control(c) || matches!(c, '*' | '>'))
}

/// A configured subject or prefix (possibly of several tokens): not empty,
/// no wildcards or spaces, no empty token at either end.
pub fn is_literal_subject(s: &str) -> bool {
    !(s.is_empty() || s.contains(['*', '>', ' ']) || s.starts_with('.') || s.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(is_token("acme-1"));
        for bad in ["", "a.b", "a*", ">", "a b", "a\u{7}"] {
            assert!(!is_token(bad), "{bad:?}");
        }
        assert!(is_literal_tail("c.1"));
        assert!(!is_literal_tail("c*"));
        assert!(is_literal_subject("zhijian.deadletter"));
        for bad in ["", ".a", "a.", "a.>", "a b"] {
            assert!(!is_literal_subject(bad), "{bad:?}");
        }
    }
}
