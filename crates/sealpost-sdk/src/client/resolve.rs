//! Naming: how a conversation is shown (`@user`, `#name`, `#name~1a2b` when names collide) and
//! how a name the user typed — `@user`, `#name`, or a conversation id or a unique prefix of it —
//! is resolved to one conversation, with ambiguity explained.

use super::*;

impl Client {
    pub(super) fn display(&self, group: GroupId) -> String {
        let Some(conv) = self.convs.get(&group) else {
            return format!("#{}", group.short());
        };
        match (conv.info.kind, &conv.info.peer) {
            (ConversationKind::Direct, Some(peer)) => at(peer),
            _ => {
                let name = if conv.info.name.is_empty() {
                    group.short()
                } else {
                    conv.info.name.clone()
                };
                let clash = self.convs.iter().any(|(g, c)| {
                    *g != group
                        && c.info.kind == ConversationKind::Group
                        && c.info.name == conv.info.name
                });
                if clash {
                    format!("#{name}~{}", group.short())
                } else {
                    format!("#{name}")
                }
            }
        }
    }

    pub(super) fn find(&self, target: &str) -> Result<Option<GroupId>, Error> {
        if let Some(user) = target.strip_prefix('@') {
            let user = Username::new(user)?;
            return Ok(self
                .convs
                .iter()
                .rev()
                .find(|(_, c)| {
                    c.info.kind == ConversationKind::Direct
                        && c.info.active
                        && c.info.peer.as_ref() == Some(&user)
                })
                .map(|(g, _)| *g));
        }
        let Some(name) = target.strip_prefix('#') else {
            return self.find_by_id(target);
        };
        let (name, suffix) = name
            .split_once('~')
            .map_or((name, None), |(n, s)| (n, Some(s)));
        let mut hits: Vec<GroupId> = self
            .convs
            .iter()
            .filter(|(g, c)| {
                c.info.kind == ConversationKind::Group
                    && (c.info.name == name || (c.info.name.is_empty() && g.short() == name))
                    && suffix.is_none_or(|s| g.to_string().starts_with(s))
            })
            .map(|(g, _)| *g)
            .collect();
        // A group this device left does not make the name of one it is in ambiguous.
        if hits
            .iter()
            .any(|g| self.convs.get(g).is_some_and(|c| c.info.active))
        {
            hits.retain(|g| self.convs.get(g).is_some_and(|c| c.info.active));
        }
        one_match(target, &hits, |g| format!("#{name}~{}", g.short()))
    }

    /// A conversation named by its id, or a unique prefix of it (at least 4 hex digits).
    pub(super) fn find_by_id(&self, target: &str) -> Result<Option<GroupId>, Error> {
        let prefix = target.to_ascii_lowercase();
        if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::BadTarget(target.to_owned()));
        }
        let hits: Vec<GroupId> = self
            .convs
            .keys()
            .filter(|g| g.to_string().starts_with(&prefix))
            .copied()
            .collect();
        one_match(target, &hits, |g| format!("{g} ({})", self.display(g)))
    }

    pub(super) fn resolve(&self, target: &str) -> Result<GroupId, Error> {
        self.find(target)?
            .ok_or_else(|| Error::UnknownConversation(target.to_owned()))
    }
}

/// Whether `name` is a group name: 1 to 64 letters, digits, '-', '_' or '.' — nothing that can
/// start another line, look like `@user`, or carry the `~id` suffix that tells clashing names
/// apart. Checked when a group is made and when a member's Meta message names it.
pub(super) fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "-_.".contains(c))
}

/// The one conversation `target` names among `hits`; several are an error that lists them
/// (each as `name` gives it), so that the user can pick one.
pub(super) fn one_match(
    target: &str,
    hits: &[GroupId],
    name: impl Fn(GroupId) -> String,
) -> Result<Option<GroupId>, Error> {
    match hits {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(Error::AmbiguousConversation(
            target.to_owned(),
            many.iter().map(|g| name(*g)).collect::<Vec<_>>().join(", "),
        )),
    }
}
