//! Retention as data plus a pure function (rustic's model): which snapshots to keep, and why.
//!
//! A snapshot is kept when any rule keeps it:
//!
//! * `keep_last`: one of the newest `keep_last` *valid* snapshots, whatever its age (a floor);
//! * `retention_days`: younger than that many days;
//! * `keep_hourly` / `keep_daily` / `keep_weekly` / `keep_monthly` / `keep_yearly` (restic's and
//!   rustic's calendar rules): the newest valid snapshot of each of the newest N hours / days /
//!   ISO weeks / months / years *that have a valid snapshot*, counted back from the newest
//!   snapshot (not from now), in UTC. A gap of several days therefore costs nothing: the rule
//!   reaches further back instead.
//!
//! Invalid snapshots never count towards any rule, so a run of bad snapshots can never push out
//! the last good one. Every kept snapshot carries the reasons of every rule that keeps it.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KeepPolicy {
    pub retention_days: u32,
    pub keep_last: u32,
    /// Calendar rules; 0 turns a rule off.
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl KeepPolicy {
    /// The policy a profile's `[backup]` section describes.
    pub fn from_backup(b: &crate::profile::Backup) -> Self {
        Self {
            retention_days: b.retention_days,
            keep_last: b.keep_last,
            keep_hourly: b.keep_hourly,
            keep_daily: b.keep_daily,
            keep_weekly: b.keep_weekly,
            keep_monthly: b.keep_monthly,
            keep_yearly: b.keep_yearly,
        }
    }

    /// `retention_days = 7, keep_last = 3, keep_daily = 7`: the rules in force, for messages.
    pub fn describe(&self) -> String {
        let mut v = vec![
            format!("retention_days = {}", self.retention_days),
            format!("keep_last = {}", self.keep_last),
        ];
        for (rule, n) in self.calendar() {
            if n > 0 {
                v.push(format!("keep_{} = {n}", rule.key()));
            }
        }
        v.join(", ")
    }

    fn calendar(&self) -> [(Calendar, u32); 5] {
        [
            (Calendar::Hourly, self.keep_hourly),
            (Calendar::Daily, self.keep_daily),
            (Calendar::Weekly, self.keep_weekly),
            (Calendar::Monthly, self.keep_monthly),
            (Calendar::Yearly, self.keep_yearly),
        ]
    }
}

/// One calendar rule: how a moment maps to its bucket, named as the reasons print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Calendar {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Calendar {
    fn key(self) -> &'static str {
        match self {
            Calendar::Hourly => "hourly",
            Calendar::Daily => "daily",
            Calendar::Weekly => "weekly",
            Calendar::Monthly => "monthly",
            Calendar::Yearly => "yearly",
        }
    }

    /// `2026-12-01T14`, `2026-12-01`, `2026-W48`, `2026-12`, `2026` (UTC; ISO week-numbering year
    /// for weeks, so 2027-01-01 is in 2026-W53).
    fn bucket(self, at: Timestamp) -> String {
        let dt = at.to_zoned(TimeZone::UTC).datetime();
        let date: Date = dt.date();
        match self {
            Calendar::Hourly => format!("{date}T{:02}", dt.hour()),
            Calendar::Daily => date.to_string(),
            Calendar::Weekly => {
                let w = date.iso_week_date();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            Calendar::Monthly => format!("{:04}-{:02}", date.year(), date.month()),
            Calendar::Yearly => format!("{:04}", date.year()),
        }
    }
}

/// Whether a keep reason comes from a rule that counts snapshots (`keep_last` or a calendar
/// rule): those are the ones a damaged snapshot must not occupy.
pub fn is_counted_reason(reason: &str) -> bool {
    reason.contains("keep_last")
        || ["hourly ", "daily ", "weekly ", "monthly ", "yearly "]
            .iter()
            .any(|p| reason.starts_with(p))
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
    // Per calendar rule: buckets used so far and the last bucket seen (newest first, so the
    // first valid snapshot of a bucket is its newest).
    let mut calendar: Vec<(Calendar, u32, u32, Option<String>)> = policy
        .calendar()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| (c, n, 0, None))
        .collect();
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
                for (rule, limit, used, last) in calendar.iter_mut() {
                    let bucket = rule.bucket(c.taken_at);
                    if last.as_deref() != Some(bucket.as_str()) && *used < *limit {
                        *used += 1;
                        reasons.push(format!("{} {bucket}", rule.key()));
                    }
                    *last = Some(bucket);
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
            ..KeepPolicy::default()
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
            ..KeepPolicy::default()
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

    // ---- Calendar rules, against a calendar checked by hand (and with Python's isocalendar). ----

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[rstest]
    // A month end that is a Monday: ISO week 49 of 2026.
    #[case(
        "2026-11-30T23:59:59Z",
        "2026-11-30T23",
        "2026-11-30",
        "2026-W49",
        "2026-11",
        "2026"
    )]
    #[case(
        "2026-12-01T14:30:00Z",
        "2026-12-01T14",
        "2026-12-01",
        "2026-W49",
        "2026-12",
        "2026"
    )]
    // 2026 has 53 ISO weeks: 2026-W53 runs from Monday 2026-12-28 to Sunday 2027-01-03.
    #[case(
        "2026-12-28T00:00:00Z",
        "2026-12-28T00",
        "2026-12-28",
        "2026-W53",
        "2026-12",
        "2026"
    )]
    #[case(
        "2027-01-01T00:00:00Z",
        "2027-01-01T00",
        "2027-01-01",
        "2026-W53",
        "2027-01",
        "2027"
    )]
    #[case(
        "2027-01-03T23:00:00Z",
        "2027-01-03T23",
        "2027-01-03",
        "2026-W53",
        "2027-01",
        "2027"
    )]
    #[case(
        "2027-01-04T00:00:00Z",
        "2027-01-04T00",
        "2027-01-04",
        "2027-W01",
        "2027-01",
        "2027"
    )]
    // …and 2025-12-31 (a Wednesday) is already in 2026-W01.
    #[case(
        "2025-12-31T12:00:00Z",
        "2025-12-31T12",
        "2025-12-31",
        "2026-W01",
        "2025-12",
        "2025"
    )]
    // Leap day.
    #[case(
        "2028-02-29T05:00:00Z",
        "2028-02-29T05",
        "2028-02-29",
        "2028-W09",
        "2028-02",
        "2028"
    )]
    // UTC, whatever the offset the moment was written with.
    #[case(
        "2026-12-01T00:30:00+02:00",
        "2026-11-30T22",
        "2026-11-30",
        "2026-W49",
        "2026-11",
        "2026"
    )]
    fn calendar_buckets_are_utc_and_iso_weeks(
        #[case] moment: &str,
        #[case] hour: &str,
        #[case] day: &str,
        #[case] week: &str,
        #[case] month: &str,
        #[case] year: &str,
    ) {
        let t = at(moment);
        assert_eq!(Calendar::Hourly.bucket(t), hour);
        assert_eq!(Calendar::Daily.bucket(t), day);
        assert_eq!(Calendar::Weekly.bucket(t), week);
        assert_eq!(Calendar::Monthly.bucket(t), month);
        assert_eq!(Calendar::Yearly.bucket(t), year);
    }

    /// Candidates named by their time, valid unless the time ends in `!`.
    fn timed(spec: &[&str]) -> Vec<Candidate> {
        spec.iter()
            .map(|s| {
                let (t, valid) = match s.strip_suffix('!') {
                    Some(t) => (t, false),
                    None => (*s, true),
                };
                Candidate {
                    name: t.to_owned(),
                    taken_at: at(t),
                    valid,
                }
            })
            .collect()
    }

    fn calendar_policy(keep_last: u32, h: u32, d: u32, w: u32, m: u32, y: u32) -> KeepPolicy {
        KeepPolicy {
            retention_days: 0,
            keep_last,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: w,
            keep_monthly: m,
            keep_yearly: y,
        }
    }

    #[rstest]
    // Month ends and a gap of four days: keep_daily = 4 reaches back over the gap to 11-26;
    // keep_monthly = 3 keeps the newest of December, November (11-30) and October (10-31 23:00).
    #[case(
        calendar_policy(1, 0, 4, 0, 3, 0),
        "2026-12-03T00:00:00Z",
        &["2026-12-02T02:00:00Z", "2026-12-01T02:00:00Z", "2026-12-01T01:00:00Z",
          "2026-11-30T02:00:00Z", "2026-11-26T02:00:00Z", "2026-11-01T02:00:00Z",
          "2026-10-31T23:00:00Z", "2026-10-01T02:00:00Z", "2026-09-30T02:00:00Z"],
        &["2026-12-02T02:00:00Z", "2026-12-01T02:00:00Z", "2026-11-30T02:00:00Z",
          "2026-11-26T02:00:00Z", "2026-10-31T23:00:00Z"]
    )]
    // ISO week 53 across the new year: weekly = 3 keeps 2027-W01, 2026-W53 (its newest, 01-03)
    // and 2026-W52; yearly = 2 keeps the newest of 2027 and of 2026 (12-28, not 01-01).
    #[case(
        calendar_policy(1, 0, 0, 3, 0, 2),
        "2027-01-06T00:00:00Z",
        &["2027-01-05T02:00:00Z", "2027-01-03T02:00:00Z", "2027-01-01T02:00:00Z",
          "2026-12-28T02:00:00Z", "2026-12-27T02:00:00Z", "2026-12-20T02:00:00Z",
          "2025-12-31T02:00:00Z"],
        &["2027-01-05T02:00:00Z", "2027-01-03T02:00:00Z", "2026-12-28T02:00:00Z",
          "2026-12-27T02:00:00Z"]
    )]
    // Leap day, hourly and daily, and invalid snapshots that count for nothing: the invalid
    // 03-01 is not "the newest of March 1st", the invalid 22:00 is not an hour.
    #[case(
        calendar_policy(1, 2, 2, 0, 0, 0),
        "2028-03-02T00:00:00Z",
        &["2028-03-01T00:30:00Z!", "2028-02-29T23:10:00Z", "2028-02-29T23:05:00Z",
          "2028-02-29T22:00:00Z!", "2028-02-29T21:00:00Z", "2028-02-28T12:00:00Z"],
        &["2028-02-29T23:10:00Z", "2028-02-29T21:00:00Z", "2028-02-28T12:00:00Z"]
    )]
    // An invalid newest snapshot of a day gives way to the newest valid one of that day.
    #[case(
        calendar_policy(1, 0, 2, 0, 0, 0),
        "2026-12-03T00:00:00Z",
        &["2026-12-02T03:00:00Z!", "2026-12-02T02:00:00Z", "2026-12-01T02:00:00Z",
          "2026-11-30T02:00:00Z"],
        &["2026-12-02T02:00:00Z", "2026-12-01T02:00:00Z"]
    )]
    // keep_last stays a floor under the calendar rules: three in one day all stay.
    #[case(
        calendar_policy(3, 0, 1, 0, 0, 0),
        "2026-12-03T00:00:00Z",
        &["2026-12-02T03:00:00Z", "2026-12-02T02:00:00Z", "2026-12-02T01:00:00Z",
          "2026-12-01T02:00:00Z"],
        &["2026-12-02T03:00:00Z", "2026-12-02T02:00:00Z", "2026-12-02T01:00:00Z"]
    )]
    fn calendar_rules_keep_what_restic_would(
        #[case] policy: KeepPolicy,
        #[case] now: &str,
        #[case] spec: &[&str],
        #[case] expect: &[&str],
    ) {
        let d = apply(policy, &timed(spec), at(now));
        assert_eq!(kept(&d), expect);
        let mut rev = timed(spec);
        rev.reverse();
        assert_eq!(apply(policy, &rev, at(now)), d);
    }

    #[test]
    fn calendar_reasons_name_every_rule_that_keeps() {
        let d = apply(
            calendar_policy(2, 0, 4, 2, 3, 1),
            &timed(&[
                "2026-12-02T02:00:00Z",
                "2026-12-01T02:00:00Z",
                "2026-11-30T02:00:00Z",
                "2026-11-20T02:00:00Z",
            ]),
            at("2026-12-03T00:00:00Z"),
        );
        let reasons = |i: usize| d[i].reasons.clone();
        assert_eq!(
            reasons(0),
            [
                "newest valid #1 (keep_last = 2)",
                "daily 2026-12-02",
                "weekly 2026-W49",
                "monthly 2026-12",
                "yearly 2026"
            ]
        );
        assert_eq!(
            reasons(1),
            ["newest valid #2 (keep_last = 2)", "daily 2026-12-01"]
        );
        // 11-30 is a Monday of the same ISO week as 12-02: only day and month are new.
        assert_eq!(reasons(2), ["daily 2026-11-30", "monthly 2026-11"]);
        assert_eq!(reasons(3), ["daily 2026-11-20", "weekly 2026-W47"]);
        assert!(reasons(3).iter().all(|r| is_counted_reason(r)));
        assert!(!is_counted_reason("age 1d 0h is within retention_days = 7"));
        assert_eq!(
            calendar_policy(2, 0, 4, 2, 3, 1).describe(),
            "retention_days = 0, keep_last = 2, keep_daily = 4, keep_weekly = 2, keep_monthly = 3, keep_yearly = 1"
        );
    }
}
