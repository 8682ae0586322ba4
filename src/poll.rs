//! When to look again at something that changes by itself: a Proxmox task, an etcd state, a
//! Kubernetes node. One place for every wait's pacing, so that the user waits for the cluster
//! and not for a sleeping poll loop, while the request count stays bounded (no busy loops).
//!
//! Two rules:
//!
//! - **Due time** ([`Poller`], [`state_delay`]): while a change is expected (a window from a
//!   typical duration, reopened by every change seen), look every `fast` (at most
//!   [`DUE_POLL`]), counted from the start of the previous look; once the window has passed with
//!   nothing new, back off geometrically up to `max`.
//! - **Batch timing** ([`Batch`], [`task_next_poll`]): the tasks of one batch (one VM snapshot
//!   per VM) poll on geometric schedules shifted against each other (member k of n by k/n of a
//!   step), so that together they look often while each looks rarely. The first task seen
//!   finished tells the others when they are due (between its last poll that saw it running and
//!   the one that saw it stopped); they are polled then, at once if that time has passed, then
//!   briefly fast, and back off after.
//!
//! Every rule is a pure function of the time since the wait began, so tests compute schedules
//! instead of sleeping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// The longest pause between two looks while a change is due: a change is noticed within this.
pub const DUE_POLL: Duration = Duration::from_millis(800);
/// How long a state wait stays in its due window when the caller names no typical duration.
pub const DEFAULT_DUE_WINDOW: Duration = Duration::from_secs(120);
/// Growth of the pause once the due window has passed (pause = time past the window × this).
const STATE_BACKOFF: f64 = 0.5;

/// Poll times `first·factor^(j+phase)` for j = 0, 1, …, with gaps capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometric {
    pub first: Duration,
    pub factor: f64,
    pub max: Duration,
}

impl Geometric {
    /// The first poll time of the schedule shifted by `phase` (0 ≤ phase < 1) that is later than
    /// `elapsed`.
    pub fn next_after(&self, elapsed: Duration, phase: f64) -> Duration {
        let max = self.max.max(Duration::from_millis(1));
        let mut t = self
            .first
            .mul_f64(self.factor.max(1.0).powf(phase.clamp(0.0, 1.0)))
            .max(Duration::from_millis(1));
        while t <= elapsed {
            let gap = t
                .mul_f64(self.factor - 1.0)
                .clamp(Duration::from_millis(1), max);
            if gap == max {
                // Every `max` from here on: jump straight past `elapsed`.
                let steps = (elapsed - t).as_nanos() / max.as_nanos() + 1;
                return t + max * u32::try_from(steps).unwrap_or(u32::MAX);
            }
            t += gap;
        }
        t
    }

    /// The whole schedule up to `until` (for tests and plans).
    pub fn times(&self, phase: f64, until: Duration) -> Vec<Duration> {
        let mut v = Vec::new();
        let mut t = Duration::ZERO;
        loop {
            t = self.next_after(t, phase);
            if t > until {
                return v;
            }
            v.push(t);
        }
    }
}

/// What the batch knows about its tasks' duration: more than `lo` (a task was seen running then,
/// after its own start), at most `hi` (the quickest finished task was seen stopped then).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub lo: Option<Duration>,
    pub hi: Option<Duration>,
}

impl Estimate {
    /// The middle of what is known (`hi` alone when nothing below it was seen).
    fn mid(&self) -> Option<Duration> {
        let hi = self.hi?;
        Some(
            self.lo
                .filter(|lo| *lo < hi)
                .map_or(hi, |lo| lo + (hi - lo) / 2),
        )
    }
}

/// When a member of a batch polls its task next, `elapsed` after the task started (later than
/// `elapsed`, or `elapsed` itself, "now", when a due time has passed unpolled). `last_poll`: when
/// it was last polled.
///
/// Until a task of the batch finished: the member's shifted geometric schedule. Once one did, the
/// others are due: each is polled at the middle of the estimate and at its upper end, after its
/// own start (at once where that has passed; never sleeping more than `max` on the estimate),
/// then every `hi/8` (at most [`DUE_POLL`] and `max`) for `hi/2`, then on a geometric schedule.
pub fn task_next_poll(
    s: &Geometric,
    phase: f64,
    known: Estimate,
    elapsed: Duration,
    last_poll: Option<Duration>,
) -> Duration {
    let (Some(mid), Some(hi)) = (known.mid(), known.hi) else {
        return s.next_after(elapsed, phase);
    };
    let last = last_poll.unwrap_or_default();
    let at = |due: Duration| {
        if due <= elapsed {
            elapsed
        } else {
            due.min(elapsed + s.max)
        }
    };
    if last_poll.is_none() || last < mid {
        return at(mid);
    }
    if last < hi {
        return at(hi);
    }
    let step = (hi / 8).clamp(Duration::from_millis(5), DUE_POLL.min(s.max));
    let window_end = hi + hi / 2;
    if elapsed < window_end {
        return elapsed + step;
    }
    let after = Geometric {
        first: step,
        factor: s.factor,
        max: s.max,
    };
    window_end + after.next_after(elapsed - window_end, 0.0)
}

/// Tasks polled together: shares what their polls saw (the first finished task's duration) and
/// wakes the sleeping members when a task finishes.
pub struct Batch {
    size: usize,
    joined: AtomicUsize,
    known: watch::Sender<Estimate>,
}

impl Batch {
    /// A batch of `size` tasks running at the same time (the spread of their schedules).
    pub fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            joined: AtomicUsize::new(0),
            known: watch::Sender::new(Estimate::default()),
        }
    }

    /// The next place in the batch; member k of n polls with phase (k mod n)/n.
    pub fn join(&self) -> Member<'_> {
        let k = self.joined.fetch_add(1, Ordering::Relaxed);
        Member {
            batch: self,
            phase: (k % self.size) as f64 / self.size as f64,
            rx: self.known.subscribe(),
        }
    }

    /// A task alone: its phase comes from `seed` (e.g. its UPID), so that unrelated waits of
    /// the same kind do not poll in step.
    pub fn solo_phase(seed: &str) -> f64 {
        let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        (h % 1000) as f64 / 1000.0
    }

    pub fn known(&self) -> Estimate {
        *self.known.borrow()
    }
}

/// One task's place in a [`Batch`].
pub struct Member<'a> {
    batch: &'a Batch,
    pub phase: f64,
    rx: watch::Receiver<Estimate>,
}

impl Member<'_> {
    pub fn with_phase(mut self, phase: f64) -> Self {
        self.phase = phase;
        self
    }

    pub fn known(&self) -> Estimate {
        self.batch.known()
    }

    /// This member's task was still running `at` after its start (no one is woken).
    pub fn running(&self, at: Duration) {
        self.batch.known.send_if_modified(|k| {
            if k.hi.is_none_or(|hi| at < hi) && k.lo.is_none_or(|lo| at > lo) {
                k.lo = Some(at);
            }
            false
        });
    }

    /// This member's task finished; it took at most `took` (the start of the poll that saw it
    /// stopped). The quickest one times the others, who are woken.
    pub fn finished(&self, took: Duration) {
        self.batch.known.send_if_modified(|k| {
            if k.hi.is_none_or(|hi| took < hi) {
                k.hi = Some(took);
                k.lo = k.lo.filter(|lo| *lo < took);
                true
            } else {
                false
            }
        });
    }

    /// Sleeps until `at`, or until another task of the batch finished first (then the caller
    /// asks [`task_next_poll`] again).
    pub async fn sleep_until(&mut self, at: Instant) {
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            changed = self.rx.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(at).await;
                }
            }
        }
    }
}

/// The pause before the next look of a state wait, `since_change` after its due window opened
/// (at the start, or at the last change seen): `fast` within the window, then growing with the
/// time past it (half of it) up to `max`.
pub fn state_delay(
    since_change: Duration,
    window: Duration,
    fast: Duration,
    max: Duration,
) -> Duration {
    let fast = fast.min(max);
    match since_change.checked_sub(window) {
        None => fast,
        Some(past) => past.mul_f64(STATE_BACKOFF).clamp(fast, max),
    }
}

/// Paces a state wait loop (look, [`Poller::wait`], look, …) until a deadline, by
/// [`state_delay`]: every [`DUE_POLL`] (or `max_delay`, if shorter) while a change is due, then
/// backing off to `max_delay`.
pub struct Poller {
    fast: Duration,
    max: Duration,
    window: Duration,
    opened: Instant,
    last_look: Instant,
    deadline: Instant,
}

impl Poller {
    pub fn new(budget: Duration, max_delay: Duration) -> Self {
        let now = Instant::now();
        Self {
            fast: DUE_POLL.min(max_delay),
            max: max_delay,
            window: DEFAULT_DUE_WINDOW,
            opened: now,
            last_look: now,
            deadline: now + budget,
        }
    }

    /// The change is due within `window` (a typical duration with room to spare).
    pub fn due_within(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Something changed: another change is due, so the window opens again.
    pub fn saw_change(&mut self) {
        self.opened = Instant::now();
    }

    /// Sleeps until the next look (counted from the start of the previous one); `false` once
    /// the deadline has passed.
    pub async fn wait(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        let delay = state_delay(now - self.opened, self.window, self.fast, self.max);
        tokio::time::sleep_until((self.last_look + delay).min(self.deadline)).await;
        self.last_look = Instant::now();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// What PVE task waits use.
    fn production() -> Geometric {
        crate::pve::PollConfig::default().schedule()
    }

    #[test]
    fn geometric_schedule_grows_then_caps() {
        let s = Geometric {
            first: ms(500),
            factor: 2.0,
            max: Duration::from_secs(5),
        };
        assert_eq!(
            s.times(0.0, Duration::from_secs(20)),
            [500, 1000, 2000, 4000, 8000, 13000, 18000].map(ms)
        );
        // Shifted by half a step: between the unshifted polls.
        let half = s.times(0.5, Duration::from_secs(3));
        assert_eq!(half.len(), 3);
        assert!(half[0] > ms(700) && half[0] < ms(710), "{half:?}");
        // `next_after` jumps over the capped part without walking it.
        assert_eq!(s.next_after(Duration::from_secs(3600), 0.0), ms(3_603_000));
    }

    /// Six tasks of 3 s started together: together they look often enough to see the first end
    /// within 0.05 × 3 s, while each polls at most 3 times before it (PVE task waits' schedule).
    #[test]
    fn a_batch_of_six_spreads_its_polls() {
        let s = production();
        let task = Duration::from_secs(3);
        let mut union: Vec<Duration> = Vec::new();
        for k in 0..6 {
            let times = s.times(k as f64 / 6.0, Duration::from_secs(10));
            let before = times.iter().filter(|t| **t < task).count();
            assert!(before <= 3, "member {k}: {times:?}");
            union.extend(times);
        }
        union.sort();
        let seen = union.iter().find(|t| **t >= task).copied().unwrap();
        assert!(
            seen <= task.mul_f64(1.2),
            "first look after the end: {seen:?}"
        );
        // Any moment between 1 s and 8 s is at most 0.13 × its time before the batch's next look.
        for t in (1000..8000).step_by(50).map(ms) {
            let next = union.iter().find(|u| **u > t).copied().unwrap();
            assert!(next - t <= t.mul_f64(0.13), "{t:?} -> {next:?}");
        }
    }

    fn known(lo: u64, hi: u64) -> Estimate {
        Estimate {
            lo: Some(ms(lo)),
            hi: Some(ms(hi)),
        }
    }

    #[test]
    fn a_finished_task_times_the_others() {
        let s = production();
        // Seen running at 2.83 s, stopped at 3.18 s: the others are due at 3.005 s, then 3.18 s.
        let k = known(2830, 3180);
        // Started together with it, unpolled since: at once.
        assert_eq!(
            task_next_poll(&s, 0.3, k, ms(3200), Some(ms(2460))),
            ms(3200)
        );
        // Started later: at its own middle, skipping its spread polls before it; then at `hi`.
        assert_eq!(
            task_next_poll(&s, 0.3, k, ms(1000), Some(ms(1000))),
            ms(3005)
        );
        assert_eq!(
            task_next_poll(&s, 0.3, k, ms(3005), Some(ms(3005))),
            ms(3180)
        );
        // Nothing seen running below `hi`: due at `hi`.
        let only_hi = Estimate {
            lo: None,
            hi: Some(ms(3180)),
        };
        assert_eq!(task_next_poll(&s, 0.0, only_hi, ms(0), None), ms(3180));
        // Never sleeping more than `max` on the estimate.
        assert_eq!(
            task_next_poll(&s, 0.0, known(50_000, 60_000), ms(1000), Some(ms(1000))),
            ms(6000)
        );
        // Still running at `hi`: every hi/8 for hi/2, then backing off.
        let hi = ms(3180);
        assert_eq!(task_next_poll(&s, 0.0, k, hi, Some(hi)), hi + hi / 8);
        let end = hi + hi / 2;
        let a = task_next_poll(&s, 0.0, k, end, Some(end));
        let b = task_next_poll(&s, 0.0, k, a, Some(a));
        let c = task_next_poll(&s, 0.0, k, b, Some(b));
        assert!(c - b > b - a, "{a:?} {b:?} {c:?}");
        // Bounded: a task that never ends is polled at most every `max` in the long run.
        let mut t = hi;
        let mut polls = 0;
        while t < Duration::from_secs(600) {
            t = task_next_poll(&s, 0.0, k, t, Some(t));
            polls += 1;
        }
        assert!(polls < 140, "{polls} polls in 10 minutes");
    }

    #[test]
    fn the_batch_narrows_its_estimate_and_the_quickest_wins() {
        let b = Batch::new(3);
        let (m0, m1, m2, m3) = (b.join(), b.join(), b.join(), b.join());
        assert_eq!(
            [m0.phase, m1.phase, m2.phase, m3.phase],
            [0.0, 1.0 / 3.0, 2.0 / 3.0, 0.0]
        );
        assert_eq!(m1.known(), Estimate::default());
        m0.running(ms(2000));
        m1.running(ms(1000));
        assert_eq!(b.known().lo, Some(ms(2000)));
        m2.finished(ms(3300));
        m0.finished(ms(3500));
        assert_eq!(m1.known(), known(2000, 3300));
        // A poll between the bounds narrows them; one above `hi` says nothing.
        m1.running(ms(2900));
        m1.running(ms(3400));
        assert_eq!(b.known(), known(2900, 3300));
        m3.finished(ms(2800));
        assert_eq!(
            b.known(),
            Estimate {
                lo: None,
                hi: Some(ms(2800))
            }
        );
        let p = Batch::solo_phase("UPID:pve1:0001:0002:0003:qmsnapshot:101:root@pam:");
        assert!((0.0..1.0).contains(&p));
        assert_ne!(
            p,
            Batch::solo_phase("UPID:pve1:0001:0002:0003:qmsnapshot:102:root@pam:")
        );
    }

    #[tokio::test]
    async fn a_sleeping_member_wakes_when_another_finishes() {
        let b = Batch::new(2);
        let (mut sleeper, other) = (b.join(), b.join());
        let t0 = std::time::Instant::now();
        let far = Instant::now() + Duration::from_secs(30);
        tokio::join!(sleeper.sleep_until(far), async {
            tokio::time::sleep(ms(20)).await;
            other.finished(ms(20));
        });
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn state_waits_look_every_due_poll_in_the_window_then_back_off() {
        let max = Duration::from_secs(5);
        let window = Duration::from_secs(60);
        // In the window: every 0.8 s, whatever `max` allows.
        for t in [0, 1000, 59_999].map(ms) {
            assert_eq!(state_delay(t, window, DUE_POLL, max), DUE_POLL);
        }
        assert_eq!(state_delay(ms(10), window, DUE_POLL, ms(100)), ms(100));
        // After it: growing with the time past it, up to `max`.
        assert_eq!(state_delay(ms(62_000), window, DUE_POLL, max), ms(1000));
        assert_eq!(state_delay(ms(600_000), window, DUE_POLL, max), max);
        // Bounded: looks in 15 minutes with a 2-minute window.
        let (mut t, mut looks) = (Duration::ZERO, 0);
        while t < Duration::from_secs(900) {
            t += state_delay(t, DEFAULT_DUE_WINDOW, DUE_POLL, max);
            looks += 1;
        }
        assert!((150..=330).contains(&looks), "{looks} looks");
    }
}
