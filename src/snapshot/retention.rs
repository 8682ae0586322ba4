//! Retention as data plus a pure function (rustic's model): which snapshots to keep, and why.
//!
//! A snapshot is kept if it is one of the newest `keep_last` *valid* snapshots, whatever its age,
//! or if it is younger than `retention_days`. Invalid snapshots never count towards `keep_last`,
//! so a run of bad snapshots can never push out the last good one.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KeepPolicy {
    pub retention_days: u32,
    pub keep_last: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub taken_at: Timestamp,
    pub valid: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub name: String,
    pub taken_at: Timestamp,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// Decides for every candidate; the result is sorted newest first.
pub fn apply(policy: KeepPolicy, candidates: &[Candidate], now: Timestamp) -> Vec<Decision> {
    let mut sorted: Vec<&Candidate> = candidates.iter().collect();
    sorted.sort_by(|a, b| b.taken_at.cmp(&a.taken_at).then(b.name.cmp(&a.name)));
    let window = SignedDuration::from_hours(24 * i64::from(policy.retention_days));
    let mut valid_seen = 0u32;
    sorted
        .into_iter()
        .map(|c| {
            let mut reasons = Vec::new();
            let age = now.duration_since(c.taken_at);
            if age.is_negative() {
                reasons.push("dated in the future (check the clock)".to_owned());
            }
            if c.valid {
                valid_seen += 1;
                if valid_seen <= policy.keep_last {
                    reasons.push(format!(
                        "newest valid #{valid_seen} (keep_last = {})",
                        policy.keep_last
                    ));
                }
            }
            if !age.is_negative() && age < window {
                reasons.push(format!(
                    "age {} is within retention_days = {}",
                    human_age(age),
                    policy.retention_days
                ));
            }
            let keep = !reasons.is_empty();
            if !keep {
                reasons.push(format!(
                    "age {} is past retention_days = {}",
                    human_age(age),
                    policy.retention_days
                ));
            }
            if !c.valid {
                reasons.push("failed verification".to_owned());
            }
            Decision {
                name: c.name.clone(),
                taken_at: c.taken_at,
                keep,
                reasons,
            }
        })
        .collect()
}

/// `3d 4h`, `5h 12m`, `42s`: short and calm.
pub fn human_age(age: SignedDuration) -> String {
    let secs = age.as_secs().max(0);
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn now() -> Timestamp {
        "2026-11-30T12:00:00Z".parse().unwrap()
    }

    /// Candidates `days` old (fractional days allowed via hours), valid unless marked.
    fn cands(spec: &[(i64, bool)]) -> Vec<Candidate> {
        spec.iter()
            .enumerate()
            .map(|(i, &(hours, valid))| Candidate {
                name: format!("s{i}"),
                taken_at: now() - SignedDuration::from_hours(hours),
                valid,
            })
            .collect()
    }

    fn kept(decisions: &[Decision]) -> Vec<&str> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.name.as_str())
            .collect()
    }

    #[rstest]
    // Everything young: all kept.
    #[case(7, 3, &[(1, true), (30, true), (50, true), (100, true)], &["s0", "s1", "s2", "s3"])]
    // All older than retention: the newest keep_last stay.
    #[case(7, 3, &[(24*10, true), (24*11, true), (24*12, true), (24*13, true), (24*14, true)], &["s0", "s1", "s2"])]
    // Mixed: young ones by age, old ones go once the floor is met.
    #[case(7, 2, &[(24, true), (48, true), (24*8, true), (24*9, true)], &["s0", "s1"])]
    // Invalid snapshots do not count towards the floor: the older valid ones stay.
    #[case(7, 2, &[(24*8, false), (24*9, false), (24*10, true), (24*11, true), (24*12, true)], &["s2", "s3"])]
    // Exactly at the boundary: 7 days old is past a 7-day window.
    #[case(7, 1, &[(1, true), (24*7, true)], &["s0"])]
    // keep_last larger than the set: nothing deleted.
    #[case(1, 10, &[(24*30, true), (24*40, true)], &["s0", "s1"])]
    // retention_days = 0 keeps only the floor.
    #[case(0, 1, &[(1, true), (2, true)], &["s0"])]
    fn keeps_what_it_should(
        #[case] days: u32,
        #[case] keep_last: u32,
        #[case] spec: &[(i64, bool)],
        #[case] expect: &[&str],
    ) {
        let policy = KeepPolicy {
            retention_days: days,
            keep_last,
        };
        let d = apply(policy, &cands(spec), now());
        assert_eq!(kept(&d), expect);
        // Same decisions whatever the input order.
        let mut rev = cands(spec);
        rev.reverse();
        assert_eq!(apply(policy, &rev, now()), d);
    }

    #[test]
    fn reasons_explain_each_decision() {
        let policy = KeepPolicy {
            retention_days: 7,
            keep_last: 2,
        };
        let d = apply(
            policy,
            &cands(&[(24 * 9, true), (24 * 10, false), (-2, true)]),
            now(),
        );
        // Sorted newest first: the future one, then 9d, then 10d.
        assert_eq!(d[0].name, "s2");
        assert!(d[0].reasons[0].contains("future"));
        assert!(d[1].keep);
        assert_eq!(d[1].reasons, vec!["newest valid #2 (keep_last = 2)"]);
        assert!(!d[2].keep);
        assert_eq!(
            d[2].reasons,
            vec![
                "age 10d 0h is past retention_days = 7",
                "failed verification"
            ]
        );
    }
}
