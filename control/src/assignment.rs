//! Who owns what: the pure function from (rules, live members, previous assignment) to each
//! rule's bucket owners, single-host handlers and the default host. Every host computes it on
//! its own from the same inputs and gets the same answer; the static `[cluster] members` list
//! and (next) the membership protocol both feed it.
//!
//! Multiple-host rules: each live member's quota of the 60 buckets is proportional to its load
//! weight, rounded by largest remainder (ties to the lower host priority). Members keep the
//! buckets they had, up to their quota; only the rest move (fewest buckets moved for the new
//! quotas). If every live member has weight 0, the buckets are split equally instead: traffic
//! for a rule is never black-holed by weights.
//!
//! Single-host rules: the live member with the best (lowest) handling priority.
//! Default host: the live member with the lowest host priority.

use wlbs_dataplane::filter::table::RuleOwnership;
use wlbs_dataplane::filter::{Mode, BUCKETS};

/// No owner (no live member, or a rule that is not multiple-host).
pub const NOBODY: u8 = 0;

/// A load weight meaning "takes no part in this rule" (the rule is drained or disabled on that
/// host): unlike weight 0, which shares equally when every member has it, such a member
/// never gets a bucket; with every member out, nobody does.
pub const OUT_OF_RULE: u8 = u8::MAX;

/// One live member and its per-rule parameters (index = rule index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Host priority 1..=32.
    pub priority: u8,
    /// Load weight 0..=100 per rule (used for multiple-host rules).
    pub load_weights: Vec<u8>,
    /// Handling priority per rule (used for single-host rules; lower is better).
    pub handling_priorities: Vec<u8>,
}

/// One rule's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleAssignment {
    /// Owner (host priority) of each bucket; [`NOBODY`] for rules that are not multiple-host.
    pub owners: [u8; BUCKETS],
    /// The handler of a single-host rule.
    pub handler: Option<u8>,
}

/// The whole cluster's assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub rules: Vec<RuleAssignment>,
    pub default_host: Option<u8>,
}

impl Assignment {
    /// Bitmap of the buckets `priority` owns in `rule`.
    pub fn buckets_of(&self, rule: usize, priority: u8) -> u64 {
        self.rules.get(rule).map_or(0, |r| {
            r.owners
                .iter()
                .enumerate()
                .filter(|(_, &o)| o == priority && o != NOBODY)
                .fold(0u64, |m, (b, _)| m | 1 << b)
        })
    }

    /// What `priority` owns outright (no hand-off in progress): the data plane's view.
    pub fn ownership_of(&self, priority: u8) -> Vec<RuleOwnership> {
        (0..self.rules.len())
            .map(|i| RuleOwnership {
                owned: self.buckets_of(i, priority),
                incoming: 0,
                outgoing: 0,
                handler: self.rules[i].handler == Some(priority),
            })
            .collect()
    }
}

/// Largest-remainder quotas of `BUCKETS` for `weights` (members sorted by priority).
fn quotas(weights: &[u64]) -> Vec<usize> {
    let total: u64 = weights.iter().sum();
    let weights: Vec<u64> = if total == 0 {
        vec![1; weights.len()]
    } else {
        weights.to_vec()
    };
    let total: u64 = weights.iter().sum();
    let n = BUCKETS as u64;
    let mut quota: Vec<usize> = weights.iter().map(|w| (w * n / total) as usize).collect();
    let mut left = BUCKETS - quota.iter().sum::<usize>();
    // Remainders, largest first; ties to the lower priority (= earlier index).
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weights[i] * n % total));
    for i in order {
        if left == 0 {
            break;
        }
        quota[i] += 1;
        left -= 1;
    }
    quota
}

/// Computes the assignment. `previous` (the last agreed one) keeps bucket movement minimal.
pub fn assign(modes: &[Mode], members: &[Member], previous: Option<&Assignment>) -> Assignment {
    let mut live: Vec<&Member> = members.iter().collect();
    live.sort_by_key(|m| m.priority);
    live.dedup_by_key(|m| m.priority);
    let rules = modes
        .iter()
        .enumerate()
        .map(|(rule, mode)| match mode {
            Mode::Disabled => RuleAssignment {
                owners: [NOBODY; BUCKETS],
                handler: None,
            },
            Mode::Single => RuleAssignment {
                owners: [NOBODY; BUCKETS],
                handler: live
                    .iter()
                    .min_by_key(|m| {
                        (
                            m.handling_priorities.get(rule).copied().unwrap_or(u8::MAX),
                            m.priority,
                        )
                    })
                    .map(|m| m.priority),
            },
            Mode::Multiple => RuleAssignment {
                owners: split(rule, &live, previous.and_then(|p| p.rules.get(rule))),
                handler: None,
            },
        })
        .collect();
    Assignment {
        rules,
        default_host: live.first().map(|m| m.priority),
    }
}

fn split(rule: usize, live: &[&Member], previous: Option<&RuleAssignment>) -> [u8; BUCKETS] {
    let mut owners = [NOBODY; BUCKETS];
    let live: Vec<&Member> = live
        .iter()
        .copied()
        .filter(|m| m.load_weights.get(rule) != Some(&OUT_OF_RULE))
        .collect();
    if live.is_empty() {
        return owners;
    }
    let weights: Vec<u64> = live
        .iter()
        .map(|m| m.load_weights.get(rule).copied().unwrap_or(50) as u64)
        .collect();
    let quota = quotas(&weights);
    let mut held = vec![0usize; live.len()];
    // Keep what each member had, up to its quota.
    if let Some(prev) = previous {
        for (b, &owner) in prev.owners.iter().enumerate() {
            if let Some(i) = live.iter().position(|m| m.priority == owner) {
                if held[i] < quota[i] {
                    owners[b] = owner;
                    held[i] += 1;
                }
            }
        }
    }
    // Hand the free buckets, in order, to members below quota, in priority order.
    let mut i = 0;
    for owner in owners.iter_mut().filter(|o| **o == NOBODY) {
        while held[i] >= quota[i] {
            i += 1;
        }
        *owner = live[i].priority;
        held[i] += 1;
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(priority: u8, weight: u8) -> Member {
        Member {
            priority,
            load_weights: vec![weight],
            handling_priorities: vec![priority],
        }
    }

    fn count(a: &Assignment, p: u8) -> u32 {
        a.buckets_of(0, p).count_ones()
    }

    #[test]
    fn equal_weights_split_sixty_evenly() {
        let a = assign(
            &[Mode::Multiple],
            &[member(3, 50), member(1, 50), member(2, 50)],
            None,
        );
        assert_eq!([count(&a, 1), count(&a, 2), count(&a, 3)], [20, 20, 20]);
        assert_eq!(a.default_host, Some(1));
    }

    #[test]
    fn weights_thirty_and_sixty_give_a_third_and_two_thirds() {
        let a = assign(&[Mode::Multiple], &[member(1, 30), member(2, 60)], None);
        assert_eq!((count(&a, 1), count(&a, 2)), (20, 40));
    }

    #[test]
    fn all_zero_weights_split_equally() {
        let a = assign(&[Mode::Multiple], &[member(1, 0), member(2, 0)], None);
        assert_eq!((count(&a, 1), count(&a, 2)), (30, 30));
    }

    #[test]
    fn a_member_out_of_a_rule_gets_none_of_its_buckets_even_alone() {
        let a = assign(
            &[Mode::Multiple],
            &[member(1, OUT_OF_RULE), member(2, 0)],
            None,
        );
        assert_eq!((count(&a, 1), count(&a, 2)), (0, 60));
        let alone = assign(&[Mode::Multiple], &[member(1, OUT_OF_RULE)], None);
        assert_eq!(count(&alone, 1), 0);
        assert!(alone.rules[0].owners.iter().all(|&o| o == NOBODY));
    }

    #[test]
    fn zero_weight_member_gets_nothing() {
        let a = assign(&[Mode::Multiple], &[member(1, 0), member(2, 10)], None);
        assert_eq!((count(&a, 1), count(&a, 2)), (0, 60));
    }

    #[test]
    fn single_host_rule_goes_to_best_handling_priority() {
        let members = [
            Member {
                priority: 1,
                load_weights: vec![50],
                handling_priorities: vec![7],
            },
            Member {
                priority: 2,
                load_weights: vec![50],
                handling_priorities: vec![3],
            },
        ];
        let a = assign(&[Mode::Single], &members, None);
        assert_eq!(a.rules[0].handler, Some(2));
        assert!(a.ownership_of(2)[0].handler);
        assert!(!a.ownership_of(1)[0].handler);
    }

    #[test]
    fn a_failed_host_moves_only_its_buckets() {
        let three = assign(
            &[Mode::Multiple],
            &[member(1, 50), member(2, 50), member(3, 50)],
            None,
        );
        let two = assign(
            &[Mode::Multiple],
            &[member(1, 50), member(3, 50)],
            Some(&three),
        );
        for b in 0..BUCKETS {
            if three.rules[0].owners[b] != 2 {
                assert_eq!(
                    two.rules[0].owners[b], three.rules[0].owners[b],
                    "bucket {b} moved"
                );
            }
        }
        assert_eq!((count(&two, 1), count(&two, 3)), (30, 30));
    }

    #[test]
    fn no_members_own_nothing() {
        let a = assign(&[Mode::Multiple, Mode::Single], &[], None);
        assert!(a.rules[0].owners.iter().all(|&o| o == NOBODY));
        assert_eq!(a.rules[1].handler, None);
        assert_eq!(a.default_host, None);
    }

    fn members_strategy() -> impl Strategy<Value = Vec<Member>> {
        proptest::collection::btree_map(1u8..=32, (0u8..=100, 1u8..=32), 1..=32).prop_map(|m| {
            m.into_iter()
                .map(|(priority, (w, h))| Member {
                    priority,
                    load_weights: vec![w, 50],
                    handling_priorities: vec![h, h],
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn every_bucket_has_exactly_one_live_owner_and_weights_hold(
            members in members_strategy(),
            shuffle in any::<u64>(),
        ) {
            let modes = [Mode::Multiple, Mode::Multiple];
            let a = assign(&modes, &members, None);
            // Order of the member list does not matter: every host computes the same.
            let mut shuffled = members.clone();
            let n = shuffled.len();
            shuffled.rotate_left((shuffle as usize) % n);
            prop_assert_eq!(&assign(&modes, &shuffled, None), &a);
            for rule in 0..2 {
                let total_weight: u64 = members.iter().map(|m| m.load_weights[rule] as u64).sum();
                let mut union = 0u64;
                for m in &members {
                    let mine = a.buckets_of(rule, m.priority);
                    prop_assert_eq!(union & mine, 0, "bucket owned twice");
                    union |= mine;
                    if total_weight > 0 {
                        let exact = 60.0 * m.load_weights[rule] as f64 / total_weight as f64;
                        let got = mine.count_ones() as f64;
                        prop_assert!((got - exact).abs() < 1.0, "weight {} got {} of {}", m.load_weights[rule], got, exact);
                    }
                }
                prop_assert_eq!(union, RuleOwnership::ALL_BUCKETS);
            }
        }

        #[test]
        fn membership_changes_move_no_more_than_needed(
            before in members_strategy(),
            after in members_strategy(),
        ) {
            let modes = [Mode::Multiple];
            let a = assign(&modes, &before, None);
            let b = assign(&modes, &after, Some(&a));
            // Minimal movement for the new quotas: a bucket changes owner only if its old
            // owner left or is above its new quota.
            let moved = (0..BUCKETS).filter(|&i| a.rules[0].owners[i] != b.rules[0].owners[i]).count();
            let needed: usize = before
                .iter()
                .map(|m| {
                    let had = a.buckets_of(0, m.priority).count_ones() as usize;
                    let now = b.buckets_of(0, m.priority).count_ones() as usize;
                    if after.iter().any(|x| x.priority == m.priority) { had.saturating_sub(now) } else { had }
                })
                .sum();
            prop_assert_eq!(moved, needed);
        }
    }
}
