//! Saving and restoring conversations (checkpoints, take-overs): export,
//! import, tombstones.

use super::*;

impl Engine {
    /// Open conversations, for saving across a restart:
    /// `(tenant, conversation id, state)`, the rules' state keyed by rule
    /// id.
    pub fn export(&self) -> impl Iterator<Item = (&str, &str, Conversation)> {
        self.open
            .iter()
            .map(|(k, c)| (&*k.tenant, &*k.id, self.saved(&k.tenant, c)))
    }

    /// One open conversation's state as [`Engine::export`] gives it; None
    /// when it is not open (closed, or never seen).
    pub fn export_one(&self, tenant: &str, id: &str) -> Option<Conversation> {
        let c = self.open.get(&KeyRef { tenant, id })?;
        Some(self.saved(tenant, c))
    }

    /// Recently closed conversations, for saving across a take-over:
    /// `(tenant, conversation id, tombstone)`.
    pub fn export_closed(&self) -> impl Iterator<Item = (&str, &str, Tombstone)> {
        self.closed
            .iter()
            .map(|(k, t)| (&*k.tenant, &*k.id, t.clone()))
    }

    /// One recently closed conversation's tombstone; None when it is not
    /// closed (open, or forgotten).
    pub fn export_closed_one(&self, tenant: &str, id: &str) -> Option<Tombstone> {
        self.closed.get(&KeyRef { tenant, id }).cloned()
    }

    /// Restores a closed conversation's tombstone (an open conversation of
    /// that key stays open). It is forgotten `tombstone_ttl_ms` after its
    /// close, by this engine's clock.
    pub fn import_closed(&mut self, tenant: &str, id: &str, tombstone: Tombstone) {
        let key = KeyRef { tenant, id };
        if !self.open.contains_key(&key) {
            self.closed.insert(key.to_key(), tombstone);
        }
    }

    /// A conversation's state to save: its rules' state keyed by rule id.
    fn saved(&self, tenant: &str, c: &Conversation) -> Conversation {
        let scanner = self.lexicon(tenant, c.lexicon);
        let mut saved = c.clone();
        saved.saved_rules = named_states(scanner, std::mem::take(&mut saved.states));
        saved.lexicon_version = scanner.version().to_string();
        saved
    }

    /// Restores a saved conversation (replacing any state under that key).
    /// Rule state is matched to the lexicon's rules by id; state saved by
    /// format 1 (greeting verdict, closing bits) goes to the required rules
    /// of categories `missing_greeting` and `missing_closing`.
    ///
    /// It is judged on by the lexicon version it was saved with when that
    /// is known ([`Engine::register`]); else by the current one, and its
    /// summary names the version that judged it before
    /// (`earlier_lexicon_versions`).
    pub fn import(&mut self, tenant: &str, id: &str, mut conv: Conversation) {
        conv.order = self.next_order;
        self.next_order += 1;
        let saved_with = std::mem::take(&mut conv.lexicon_version);
        conv.lexicon = match self.generation_of(tenant, &saved_with) {
            Some(g) => g,
            None => {
                if !saved_with.is_empty() && !conv.earlier_lexicons.contains(&saved_with) {
                    conv.earlier_lexicons.push(saved_with);
                }
                self.generation
            }
        };
        let scanner = self.lexicon(tenant, conv.lexicon);
        let (book, lexicon) = (scanner.book(), scanner.lexicon());
        let mut named = std::mem::take(&mut conv.saved_rules);
        let legacy = (conv.greeted.take(), conv.closing_bits.take());
        conv.states = book.states_from(lexicon, &mut |rule_id| {
            if let Some(s) = take_named(&mut named, rule_id) {
                return Some(s);
            }
            crate::book::state_from_format_1(lexicon, rule_id, legacy, conv.agent_segments)
        });
        conv.deadline = book.next_deadline(lexicon, &conv.states);
        self.open.insert(KeyRef { tenant, id }.to_key(), conv);
    }
}
