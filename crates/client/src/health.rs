//! The region's members as their nodes report themselves: which one leads, how far each has
//! applied the region's log, which cannot serve. The client asks the healthiest first.

use std::sync::atomic::Ordering;
use std::time::Duration;

use meridian_proto::v1 as pb;

use crate::Client;

/// How long a node has to report its status before it counts as unreachable.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// One node of the region, as it reported itself, or `status: None` when it did not answer
/// within [`STATUS_TIMEOUT`].
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub url: String,
    pub status: Option<MemberStatus>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemberStatus {
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`...
    pub role: String,
    /// The leader this node knows of (0: none).
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Set while the node's replica cannot apply a committed entry: it serves no reads.
    pub apply_error: Option<String>,
}

impl MemberStatus {
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }
}

impl Client {
    /// Every node's status, asked of all at once.
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

    /// The member that reports itself leader, if one answers.
    pub async fn leader(&self) -> Option<Member> {
        self.members()
            .await
            .into_iter()
            .find(|m| m.status.as_ref().is_some_and(MemberStatus::is_leader))
    }

    /// Makes the healthiest node the one the client asks first (see [`healthiest`]) and
    /// answers its URL; `None` when no node answered (the order stays).
    pub async fn prefer_healthiest(&self) -> Option<String> {
        let members = self.members().await;
        let best = healthiest(&members)?;
        self.preferred.store(best, Ordering::Relaxed);
        Some(members[best].url.clone())
    }
}

/// The index of the healthiest member: one that answered and can serve reads, with the most
/// of the region's log applied; of those as far, the leader (its reads need no hop).
pub fn healthiest(members: &[Member]) -> Option<usize> {
    members
        .iter()
        .enumerate()
        .filter_map(|(i, m)| {
            let s = m.status.as_ref()?;
            s.apply_error.is_none().then_some((
                s.applied_index,
                s.is_leader(),
                std::cmp::Reverse(i),
                i,
            ))
        })
        .max()
        .map(|(.., i)| i)
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
                leader_id: 0,
                commit_index: 100,
                applied_index: applied,
                apply_error: apply_error.map(str::to_string),
            }),
        }
    }

    #[test]
    fn the_healthiest_answers_serves_and_has_applied_the_most() {
        let down = Member {
            url: "http://down".into(),
            status: None,
        };
        assert_eq!(healthiest(&[]), None);
        assert_eq!(healthiest(std::slice::from_ref(&down)), None);
        assert_eq!(
            healthiest(&[
                down.clone(),
                member(90, "follower", None),
                member(95, "follower", None)
            ]),
            Some(2)
        );
        assert_eq!(
            healthiest(&[
                member(99, "follower", Some("disk")),
                member(95, "follower", None)
            ]),
            Some(1),
            "a node that cannot apply serves no reads"
        );
        assert_eq!(
            healthiest(&[
                member(95, "follower", None),
                member(95, "leader", None),
                down
            ]),
            Some(1),
            "as far along: the leader"
        );
        assert_eq!(
            healthiest(&[member(95, "follower", None), member(95, "follower", None)]),
            Some(0),
            "as far along: the first given"
        );
    }
}
