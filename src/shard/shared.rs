//! Shared subscriptions (`$share/GROUP/FILTER`, MQTT 5.0 4.8.2): each message goes to one
//! member of each matching group. Every shard keeps a replica of every group's members,
//! updated by join/leave messages over the mesh; the shard where a message is published
//! picks one member per matching group, round robin, and the message carries that choice
//! to the member's shard. Picking at the origin means no two shards can both deliver.

use std::collections::HashMap;

use bytes::Bytes;

use crate::protocol::QoS;
use crate::topics::SubscriptionTree;

use super::mesh::ShardId;

/// A member chosen for one message: which shard holds it, which client, at what QoS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTarget {
    pub shard: ShardId,
    pub client_id: Bytes,
    pub granted: QoS,
    pub group: Bytes,
    pub filter: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    shard: ShardId,
    client_id: Bytes,
    granted: QoS,
}

#[derive(Debug)]
struct Group {
    name: Bytes,
    filter: Bytes,
    members: Vec<Member>,
    next: usize,
}

#[derive(Default)]
pub struct SharedGroups {
    groups: Vec<Option<Group>>,
    free: Vec<u32>,
    by_name: HashMap<(Bytes, Bytes), u32>,
    filters: SubscriptionTree<u32, ()>,
}

impl SharedGroups {
    /// Adds (or updates the QoS of) a member. True when this made the group.
    pub fn join(&mut self, name: Bytes, filter: Bytes, shard: ShardId, client_id: Bytes, granted: QoS) -> bool {
        let (index, created) = match self.by_name.get(&(name.clone(), filter.clone())) {
            Some(&index) => (index, false),
            None => {
                let group = Group { name: name.clone(), filter: filter.clone(), members: Vec::new(), next: 0 };
                let index = match self.free.pop() {
                    Some(index) => {
                        self.groups[index as usize] = Some(group);
                        index
                    }
                    None => {
                        self.groups.push(Some(group));
                        (self.groups.len() - 1) as u32
                    }
                };
                self.filters.insert(&filter, index, ());
                self.by_name.insert((name, filter), index);
                (index, true)
            }
        };
        let group = self.groups[index as usize].as_mut().expect("indexed groups exist");
        match group.members.iter_mut().find(|m| m.shard == shard && m.client_id == client_id) {
            Some(member) => member.granted = granted,
            None => group.members.push(Member { shard, client_id, granted }),
        }
        created
    }

    /// Removes a member; an emptied group is dropped (and true returned).
    pub fn leave(&mut self, name: &Bytes, filter: &Bytes, shard: ShardId, client_id: &Bytes) -> bool {
        let Some(&index) = self.by_name.get(&(name.clone(), filter.clone())) else { return false };
        let group = self.groups[index as usize].as_mut().expect("indexed groups exist");
        group.members.retain(|m| !(m.shard == shard && m.client_id == *client_id));
        if group.members.is_empty() {
            self.filters.remove(filter, &index);
            self.by_name.remove(&(name.clone(), filter.clone()));
            self.groups[index as usize] = None;
            self.free.push(index);
            return true;
        }
        false
    }

    /// Every group: name and filter.
    pub fn groups(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.groups.iter().flatten().map(|group| (&group.name, &group.filter))
    }

    /// One member for each group whose filter matches `topic`, taking turns.
    pub fn choose(&mut self, topic: &[u8]) -> Vec<SharedTarget> {
        if self.filters.is_empty() {
            return Vec::new();
        }
        let mut matching = Vec::new();
        self.filters.for_each_match(topic, |index, _| matching.push(*index));
        let mut targets = Vec::with_capacity(matching.len());
        for index in matching {
            let group = self.groups[index as usize].as_mut().expect("indexed groups exist");
            let member = &group.members[group.next % group.members.len()];
            group.next = group.next.wrapping_add(1);
            targets.push(SharedTarget {
                shard: member.shard,
                client_id: member.client_id.clone(),
                granted: member.granted,
                group: group.name.clone(),
                filter: group.filter.clone(),
            });
        }
        targets
    }

    /// The next member of one group, in turn: for a message a departed member left unfinished.
    pub fn pick(&mut self, name: &Bytes, filter: &Bytes) -> Option<SharedTarget> {
        let index = *self.by_name.get(&(name.clone(), filter.clone()))?;
        let group = self.groups[index as usize].as_mut()?;
        let member = &group.members[group.next % group.members.len()];
        group.next = group.next.wrapping_add(1);
        Some(SharedTarget {
            shard: member.shard,
            client_id: member.client_id.clone(),
            granted: member.granted,
            group: group.name.clone(),
            filter: group.filter.clone(),
        })
    }

    /// A member of the group on `shard` other than `except`: where a chosen member has
    /// moved away while the message was on its way.
    pub fn local_member(&self, name: &Bytes, filter: &Bytes, shard: ShardId, except: &Bytes) -> Option<(Bytes, QoS)> {
        let index = *self.by_name.get(&(name.clone(), filter.clone()))?;
        let group = self.groups[index as usize].as_ref()?;
        group.members.iter().find(|m| m.shard == shard && m.client_id != *except).map(|m| (m.client_id.clone(), m.granted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn each_message_goes_to_one_member_in_turn() {
        let mut groups = SharedGroups::default();
        groups.join(b("g"), b("t/+"), ShardId(0), b("a"), QoS::AtLeastOnce);
        groups.join(b("g"), b("t/+"), ShardId(1), b("b"), QoS::AtMostOnce);
        groups.join(b("h"), b("t/#"), ShardId(1), b("c"), QoS::ExactlyOnce);
        let picks: Vec<Vec<Bytes>> = (0..4).map(|_| groups.choose(b"t/x").into_iter().map(|t| t.client_id).collect()).collect();
        for pick in &picks {
            assert_eq!(pick.len(), 2, "one member of each of the two groups");
            assert!(pick.contains(&b("c")));
        }
        let g_members: Vec<&Bytes> = picks.iter().map(|p| p.iter().find(|c| **c != b("c")).expect("g member")).collect();
        assert_eq!(g_members, vec![&b("a"), &b("b"), &b("a"), &b("b")]);
    }

    #[test]
    fn leaving_rebalances_and_empty_groups_vanish() {
        let mut groups = SharedGroups::default();
        groups.join(b("g"), b("t"), ShardId(0), b("a"), QoS::AtMostOnce);
        groups.join(b("g"), b("t"), ShardId(0), b("b"), QoS::AtMostOnce);
        groups.leave(&b("g"), &b("t"), ShardId(0), &b("a"));
        assert!(groups.choose(b"t").iter().all(|t| t.client_id == b("b")));
        assert_eq!(groups.local_member(&b("g"), &b("t"), ShardId(0), &b("x")), Some((b("b"), QoS::AtMostOnce)));
        assert_eq!(groups.pick(&b("g"), &b("t")).map(|t| t.client_id), Some(b("b")));
        groups.leave(&b("g"), &b("t"), ShardId(0), &b("b"));
        assert!(groups.choose(b"t").is_empty());
        assert_eq!(groups.pick(&b("g"), &b("t")), None);
        assert!(groups.by_name.is_empty());
    }
}
