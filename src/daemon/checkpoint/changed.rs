//! The conversations changed since the last checkpoint, by tenant (a delta
//! writes only these).

use super::*;

/// Conversations changed or closed since the last checkpoint, by tenant,
/// looked up without allocating (most inputs are of a conversation already
/// marked since the last checkpoint).
#[derive(Debug, Default)]
pub(crate) struct Changed(HashMap<String, HashSet<String>>);

impl Changed {
    pub(crate) fn mark(&mut self, tenant: &str, id: &str) {
        match self.0.get_mut(tenant) {
            Some(ids) if ids.contains(id) => {}
            Some(ids) => {
                ids.insert(id.to_string());
            }
            None => {
                self.0
                    .insert(tenant.to_string(), HashSet::from([id.to_string()]));
            }
        }
    }

    /// Conversations closed (a summary: ended, idle, or closed to make
    /// room for another).
    pub(crate) fn mark_closed(&mut self, events: &[Event]) {
        for e in events {
            if let Event::Summary(s) = e {
                self.mark(&s.tenant, &s.conversation_id);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds what `other` names (a delta that was not written).
    pub(crate) fn merge(&mut self, other: Changed) {
        for (tenant, ids) in other.0 {
            self.0.entry(tenant).or_default().extend(ids);
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|(t, ids)| ids.iter().map(move |id| (t.as_str(), id.as_str())))
    }
}
