//! Deadlines that move on every request without touching the runtime's timer wheel each time.
//!
//! A keep-alive connection re-arms the same deadlines on every request: the head must arrive in
//! time, the upstream must answer in time, a body must not stall. Re-arming a tokio timer takes
//! the timer driver's lock and moves an entry in its wheel, a measurable share of a proxied
//! request. [`LazySleep::set`] only records the new deadline: the tokio timer stays armed at the
//! earlier one, and when it fires before the recorded deadline it is re-armed then. So the wheel
//! sees about one operation per timeout period instead of one per request, and a deadline still
//! fires on time.
//!
//! hyper drops its header-read timer after each request head and asks for a new one. A worker's
//! [`LazyTimer::pooled`] keeps the armed tokio timers of dropped sleeps and hands them to the
//! next ones, so a keep-alive request head costs no timer allocation or wheel operation either.
//! The pool belongs to one worker's connection builder, so its timers never leave that worker's
//! runtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A deadline whose timer is armed on first wait and re-armed only when it fires early.
#[derive(Debug)]
pub struct LazySleep {
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// The waker the armed timer holds: polling again from the same task before the timer is
    /// due needs no call into it.
    registered: Option<Waker>,
    /// Where the armed timer goes when this sleep is dropped, and where it comes from.
    pool: Option<Pool>,
}

/// Armed timers of dropped sleeps, for the next sleeps of the same worker.
type Pool = Arc<Mutex<Vec<Pin<Box<Sleep>>>>>;

/// Timers kept per worker at most (one per connection waiting for a head, at the peak).
const POOL_MAX: usize = 1024;

impl LazySleep {
    pub fn new(deadline: Instant) -> LazySleep {
        LazySleep {
            deadline,
            timer: None,
            registered: None,
            pool: None,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Move the deadline. A later one is only recorded; an earlier one re-arms the timer.
    pub fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(timer) = &mut self.timer {
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
                self.registered = None;
            }
        }
    }

    /// Ready once the current deadline has passed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        if let (Some(timer), Some(waker)) = (&self.timer, &self.registered) {
            // Armed with this task's waker and not yet due (tokio never fires early).
            if waker.will_wake(cx.waker()) && Instant::now() < timer.deadline() {
                return Poll::Pending;
            }
        }
        if self.timer.is_none() {
            // A pooled timer armed for an earlier deadline is kept (it re-arms when it fires);
            // one armed for a later deadline is moved.
            self.timer = self.pool.as_ref().and_then(|p| p.lock().ok()?.pop());
            if let Some(timer) = &mut self.timer {
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
            }
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                if !self
                    .registered
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    self.registered = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Fired for an older deadline: wait for the current one.
            timer.as_mut().reset(deadline);
        }
    }
}

impl Drop for LazySleep {
    fn drop(&mut self) {
        if let (Some(timer), Some(pool)) = (self.timer.take(), &self.pool) {
            if let Ok(mut pool) = pool.lock() {
                if pool.len() < POOL_MAX {
                    pool.push(timer);
                }
            }
        }
    }
}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_expired(cx)
    }
}

/// hyper's timer with [`LazySleep`]s: the per-request reset of the header-read timeout only
/// records the new deadline.
#[derive(Debug, Clone, Default)]
pub struct LazyTimer {
    pool: Option<Pool>,
}

impl LazyTimer {
    /// A timer whose sleeps reuse the armed timers of dropped ones. Use one per worker: the
    /// timers belong to the runtime that armed them.
    pub fn pooled() -> LazyTimer {
        LazyTimer {
            pool: Some(Pool::default()),
        }
    }

    fn lazy(&self, deadline: Instant) -> LazySleep {
        LazySleep {
            deadline,
            timer: None,
            registered: None,
            pool: self.pool.clone(),
        }
    }
}

impl hyper::rt::Sleep for LazySleep {}

impl hyper::rt::Timer for LazyTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.lazy(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.lazy(deadline.into()))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<LazySleep>() {
            Some(lazy) => lazy.get_mut().set(new_deadline.into()),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }

    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn expired(s: &mut LazySleep) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(s.poll_expired(cx).is_ready())).await
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_latest_deadline_not_the_first() {
        let start = Instant::now();
        let mut s = LazySleep::new(start + Duration::from_secs(10));
        assert!(!expired(&mut s).await, "armed, not expired");
        s.set(start + Duration::from_secs(25));
        tokio::time::sleep_until(start + Duration::from_secs(11)).await;
        assert!(!expired(&mut s).await, "the first deadline was moved");
        tokio::time::sleep_until(start + Duration::from_secs(24)).await;
        assert!(!expired(&mut s).await);
        (&mut s).await;
        assert_eq!(Instant::now(), start + Duration::from_secs(25));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_rearms_at_once() {
        let start = Instant::now();
        let mut s = LazySleep::new(start + Duration::from_secs(30));
        assert!(!expired(&mut s).await);
        s.set(start + Duration::from_secs(2));
        (&mut s).await;
        assert_eq!(Instant::now(), start + Duration::from_secs(2));
    }

    fn pooled(t: &LazyTimer) -> usize {
        t.pool
            .as_ref()
            .and_then(|p| p.lock().ok().map(|p| p.len()))
            .unwrap_or(0)
    }

    async fn pending(s: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll(cx).is_pending())).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_pooled_timer_serves_the_next_sleep_at_its_own_deadline() {
        use hyper::rt::Timer;
        let t = LazyTimer::pooled();
        let start = Instant::now();
        let mut first = t.sleep(Duration::from_secs(10));
        assert!(pending(&mut first).await);
        drop(first);
        assert_eq!(pooled(&t), 1, "the armed timer is kept");
        // Later deadline: the pooled timer (armed for 10 s) is taken and re-armed when it
        // fires early.
        let mut later = t.sleep(Duration::from_secs(20));
        assert!(pending(&mut later).await);
        assert_eq!(pooled(&t), 0, "the next sleep took it");
        tokio::time::sleep_until(start + Duration::from_secs(11)).await;
        assert!(pending(&mut later).await, "not before its own deadline");
        later.as_mut().await;
        assert_eq!(Instant::now(), start + Duration::from_secs(20));
        drop(later);
        // Earlier deadline than the pooled timer's: it is moved.
        let now = Instant::now();
        let mut sooner = t.sleep(Duration::from_secs(30));
        assert!(pending(&mut sooner).await);
        drop(sooner);
        let mut soon = t.sleep(Duration::from_secs(2));
        soon.as_mut().await;
        assert_eq!(Instant::now(), now + Duration::from_secs(2));
        // A sleep never waited on arms nothing and pools nothing.
        drop(soon);
        let before = pooled(&t);
        drop(t.sleep(Duration::from_secs(5)));
        assert_eq!(pooled(&t), before);
    }

    #[tokio::test(start_paused = true)]
    async fn hyper_reset_moves_the_same_sleep() {
        use hyper::rt::Timer;
        let t = LazyTimer::default();
        let start = Instant::now();
        let mut s = t.sleep(Duration::from_secs(5));
        let pending =
            std::future::poll_fn(|cx| Poll::Ready(s.as_mut().poll(cx).is_pending())).await;
        assert!(pending);
        t.reset(&mut s, (start + Duration::from_secs(9)).into_std());
        assert!(s.as_mut().downcast_mut_pin::<LazySleep>().is_some());
        s.await;
        assert_eq!(Instant::now(), start + Duration::from_secs(9));
    }
}
