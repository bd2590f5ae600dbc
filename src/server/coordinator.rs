//! Consumer groups over the network: which live member of a group reads which partitions.
//!
//! Members join with a topic and a session timeout and then heartbeat; a member that misses
//! its session timeout is dropped. Every change of membership starts a new *generation* with
//! a fresh assignment (ranges of partitions over the members sorted by id, as Kafka's range
//! assignor), and ends the members' record streams so they pick up the new assignment.
//! Commits are accepted only for partitions the committing member owns in the current
//! generation: a member that has not yet seen a rebalance cannot move another member's
//! offsets (it may repeat records, never skip them). Committed offsets are stored exactly as
//! local `consume --group` stores them (`groups/<group>.json`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub struct Member {
    pub last_seen: Instant,
    pub session: Duration,
    pub client: String,
}

pub struct Group {
    pub topic: String,
    pub partitions: u32,
    pub generation: u64,
    pub members: BTreeMap<String, Member>,
    pub assignment: BTreeMap<String, Vec<u32>>,
    /// Bumped with the generation: open streams of the group end on a change.
    pub changed: watch::Sender<u64>,
}

impl Group {
    fn rebalance(&mut self) {
        self.generation += 1;
        self.assignment = assign(self.members.keys(), self.partitions);
        let g = self.generation;
        self.changed.send_replace(g);
    }

    pub fn owns(&self, member: &str, partition: u32) -> bool {
        self.assignment
            .get(member)
            .is_some_and(|ps| ps.contains(&partition))
    }
}

/// Range assignment: member i of m (sorted) gets partitions [i*n/m, (i+1)*n/m).
pub fn assign<'a>(members: impl Iterator<Item = &'a String>, n: u32) -> BTreeMap<String, Vec<u32>> {
    let ids: Vec<&String> = members.collect();
    let m = ids.len() as u64;
    let mut out = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let (lo, hi) = (i as u64 * n as u64 / m, (i as u64 + 1) * n as u64 / m);
        out.insert((*id).clone(), (lo as u32..hi as u32).collect());
    }
    out
}

#[derive(Debug, PartialEq, Eq)]
pub enum JoinError {
    /// The group already reads another topic.
    OtherTopic(String),
}

#[derive(Default)]
pub struct Coordinator {
    pub groups: Mutex<BTreeMap<String, Group>>,
}

/// What a member is told after joining or heartbeating.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct View {
    pub member: String,
    pub generation: u64,
    pub partitions: Vec<u32>,
    pub session_timeout_ms: u64,
}

impl Coordinator {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Group>> {
        // A poisoned lock means a panic elsewhere mid-update; the maps stay usable.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds (or refreshes) a member; a new member rebalances the group.
    pub fn join(
        &self,
        group: &str,
        topic: &str,
        partitions: u32,
        member: &str,
        session: Duration,
        client: &str,
    ) -> Result<View, JoinError> {
        let mut gs = self.lock();
        let g = gs.entry(group.to_string()).or_insert_with(|| Group {
            topic: topic.to_string(),
            partitions,
            generation: 0,
            members: BTreeMap::new(),
            assignment: BTreeMap::new(),
            changed: watch::channel(0).0,
        });
        if g.members.is_empty() {
            g.topic = topic.to_string();
            g.partitions = partitions;
        } else if g.topic != topic {
            return Err(JoinError::OtherTopic(g.topic.clone()));
        }
        let now = Instant::now();
        let fresh = !g.members.contains_key(member);
        g.members.insert(
            member.to_string(),
            Member {
                last_seen: now,
                session,
                client: client.to_string(),
            },
        );
        if fresh || g.partitions != partitions {
            g.partitions = partitions;
            g.rebalance();
        }
        Ok(view(g, member))
    }

    /// Refreshes a member's session; None when it is not (or no longer) a member.
    pub fn heartbeat(&self, group: &str, member: &str) -> Option<View> {
        let mut gs = self.lock();
        let g = gs.get_mut(group)?;
        let m = g.members.get_mut(member)?;
        m.last_seen = Instant::now();
        Some(view(g, member))
    }

    pub fn leave(&self, group: &str, member: &str) -> bool {
        let mut gs = self.lock();
        let Some(g) = gs.get_mut(group) else {
            return false;
        };
        if g.members.remove(member).is_none() {
            return false;
        }
        g.rebalance();
        true
    }

    /// Drops members whose session expired; returns (group, member) of each.
    pub fn expire(&self, now: Instant) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        let mut gs = self.lock();
        for (name, g) in gs.iter_mut() {
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| now.duration_since(m.last_seen) > m.session)
                .map(|(id, _)| id.clone())
                .collect();
            if dead.is_empty() {
                continue;
            }
            for id in dead {
                g.members.remove(&id);
                gone.push((name.clone(), id));
            }
            g.rebalance();
        }
        gone
    }
}

fn view(g: &Group, member: &str) -> View {
    View {
        member: member.to_string(),
        generation: g.generation,
        partitions: g.assignment.get(member).cloned().unwrap_or_default(),
        session_timeout_ms: g
            .members
            .get(member)
            .map_or(0, |m| m.session.as_millis() as u64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_partition_once() {
        for n in 0..9u32 {
            for m in 1..6usize {
                let ids: Vec<String> = (0..m).map(|i| format!("m{i}")).collect();
                let a = assign(ids.iter(), n);
                let mut all: Vec<u32> = a.values().flatten().copied().collect();
                all.sort();
                assert_eq!(all, (0..n).collect::<Vec<_>>(), "n={n} m={m}");
            }
        }
    }

    #[test]
    fn join_leave_and_expire_rebalance() {
        let c = Coordinator::default();
        let s = Duration::from_millis(50);
        let a = c.join("g", "t", 4, "a", s, "").unwrap();
        assert_eq!(a.partitions, vec![0, 1, 2, 3]);
        let b = c.join("g", "t", 4, "b", s, "").unwrap();
        assert_eq!(b.partitions, vec![2, 3]);
        assert_eq!(c.heartbeat("g", "a").unwrap().partitions, vec![0, 1]);
        assert_eq!(
            c.join("g", "u", 4, "c", s, ""),
            Err(JoinError::OtherTopic("t".into()))
        );
        std::thread::sleep(Duration::from_millis(80));
        c.heartbeat("g", "a");
        assert_eq!(c.expire(Instant::now()), vec![("g".into(), "b".into())]);
        assert_eq!(c.heartbeat("g", "a").unwrap().partitions, vec![0, 1, 2, 3]);
        assert!(c.heartbeat("g", "b").is_none());
        assert!(c.leave("g", "a"));
        assert!(!c.leave("g", "a"));
    }
}
