//! The region's members as their nodes report themselves: which one leads, how far each has
//! applied the region's log, which cannot serve. The client asks the healthiest first.

use std::sync::atomic::Ordering;
use std::time::Duration;

use meridian_proto::v1 as pb;

use crate::Client;

/// How long a node has to report its status before it counts as unreachable.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How far behind the most advanced member (in Raft entries) a member may be and still count
/// as healthy: a follower a few entries behind serves as well as the leader.
pub const HEALTHY_LAG: u64 = 16;

/// One node of the region, as it reported itself.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The node's gRPC URL, as the client was given it.
    pub url: String,
    /// What it reported; `None` when it did not answer within [`STATUS_TIMEOUT`].
    pub status: Option<MemberStatus>,
}

/// A node's report of itself (`Region.NodeStatus`).
#[derive(Clone, Debug, PartialEq)]
pub struct MemberStatus {
    /// The node's id in its region's Raft group.
    pub node_id: u64,
    /// Its Raft role: `leader`, `follower`, `candidate`...
    pub role: String,
    /// Its Raft term: a node cut off in a minority may still call itself leader of an older
    /// term.
    pub term: u64,
    /// The leader this node knows of (0: none).
    pub leader_id: u64,
    /// The last entry of the region's log it knows to be committed.
    pub commit_index: u64,
    /// The last entry its replica has applied: the state it reads from.
    pub applied_index: u64,
    /// Set while the node's replica cannot apply a committed entry: it serves no reads.
    pub apply_error: Option<String>,
}

impl MemberStatus {
    /// Whether the node calls itself the leader (see [`Client::leader`] for the one to trust).
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }
}

impl Client {
    /// Every node's status, asked of all at once, in the order the nodes were given.
    pub async fn members(&self) -> Vec<Member> {
        let asks = self.nodes.iter().map(|(url, client)| {
            let mut client = client.clone();
            async move {
                let status = tokio::time::timeout(
                    STATUS_TIMEOUT,
                    client.node_status(pb::NodeStatusRequest {}),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .map(|r| {
                    let s = r.into_inner();
                    MemberStatus {
                        node_id: s.node_id,
                        role: s.role,
                        term: s.term,
                        leader_id: s.leader_id,
                        commit_index: s.commit_index,
                        applied_index: s.applied_index,
                        apply_error: (!s.apply_error.is_empty()).then_some(s.apply_error),
                    }
                });
                Member {
                    url: url.clone(),
                    status,
                }
            }
        });
        futures::future::join_all(asks).await
    }

    /// The member that calls itself leader at the highest term any member reports (a
    /// deposed leader cut off in a minority may still call itself one, of an older term).
    pub async fn leader(&self) -> Option<Member> {
        let members = self.members().await;
        let term = members
            .iter()
            .filter_map(|m| m.status.as_ref().map(|s| s.term))
            .max()?;
        members.into_iter().find(|m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.is_leader() && s.term == term)
        })
    }

    /// Makes a healthy node the one the client asks first (see [`healthiest`]; of several,
    /// one at random, so that clients spread over the region) and answers its URL; `None` when
    /// no node answered (the order stays). [`Client::discover`] calls it, which costs up to
    /// [`STATUS_TIMEOUT`].
    pub async fn prefer_healthiest(&self) -> Option<String> {
        use std::hash::{BuildHasher, Hasher};
        let members = self.members().await;
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let best = healthiest(&members, seed)?;
        self.preferred.store(best, Ordering::Relaxed);
        Some(members[best].url.clone())
    }
}

/// The index of a healthy member, chosen by `seed` among them: one that answered, can serve
/// reads, and has applied the region's log to within [`HEALTHY_LAG`] entries of the most
/// advanced member.
pub fn healthiest(members: &[Member], seed: u64) -> Option<usize> {
    let serving: Vec<(usize, u64)> = members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let s = m.status.as_ref()?;
            s.apply_error.is_none().then_some((i, s.applied_index))
        })
        .collect();
    let best = serving.iter().map(|&(_, applied)| applied).max()?;
    let healthy: Vec<usize> = serving
        .into_iter()
        .filter(|&(_, applied)| applied.saturating_add(HEALTHY_LAG) >= best)
        .map(|(i, _)| i)
        .collect();
    let n = u64::try_from(healthy.len()).ok()?;
    healthy.get(usize::try_from(seed % n).ok()?).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(applied: u64, role: &str, apply_error: Option<&str>) -> Member {
        Member {
            url: format!("http://n{applied}"),
            status: Some(MemberStatus {
                node_id: applied,
                role: role.into(),
                term: 1,
                leader_id: 0,
                commit_index: 100,
                applied_index: applied,
                apply_error: apply_error.map(str::to_string),
            }),
        }
    }

    #[test]
    fn the_healthiest_answers_serves_and_is_not_behind() {
        let down = Member {
            url: "http://down".into(),
            status: None,
        };
        assert_eq!(healthiest(&[], 7), None);
        assert_eq!(healthiest(std::slice::from_ref(&down), 7), None);
        let behind = [
            down.clone(),
            member(10, "follower", None),
            member(95, "follower", None),
        ];
        for seed in 0..4 {
            assert_eq!(
                healthiest(&behind, seed),
                Some(2),
                "one far behind is passed over"
            );
        }
        let broken = [
            member(99, "follower", Some("disk")),
            member(95, "follower", None),
        ];
        assert_eq!(
            healthiest(&broken, 0),
            Some(1),
            "a node that cannot apply serves no reads"
        );
        // Several healthy: the seed spreads clients over them, the leader included.
        let healthy = [
            member(95, "follower", None),
            member(97, "leader", None),
            down,
        ];
        let picked: std::collections::BTreeSet<usize> = (0..8)
            .filter_map(|seed| healthiest(&healthy, seed))
            .collect();
        assert_eq!(picked, [0, 1].into_iter().collect());
    }
}
