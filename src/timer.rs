//! Deadlines that move on every request without touching the runtime's timer wheel each time.
//!
//! A keep-alive connection re-arms the same deadlines on every request: the head must arrive in
//! time, the upstream must answer in time, a body must not stall. Re-arming a tokio timer takes
//! the timer driver's lock and moves an entry in its wheel, a measurable share of a proxied
//! request. [`LazySleep::set`] only records the new deadline: the tokio timer stays armed at the
//! earlier one, and when it fires before the recorded deadline it is re-armed then. So the wheel
//! sees about one operation per timeout period instead of one per request, and a deadline still
//! fires on time. (hyper drops its header-read timer after each request head and asks for a new
//! one, so that deadline still costs a timer per keep-alive request; `reset` is lazy.)

use std::future::Future;
use std::pin::Pin;
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
}

impl LazySleep {
    pub fn new(deadline: Instant) -> LazySleep {
        LazySleep {
            deadline,
            timer: None,
            registered: None,
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

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().poll_expired(cx)
    }
}

/// hyper's timer with [`LazySleep`]s: the per-request reset of the header-read timeout only
/// records the new deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct LazyTimer;

impl hyper::rt::Sleep for LazySleep {}

impl hyper::rt::Timer for LazyTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazySleep::new(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(LazySleep::new(deadline.into()))
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

    #[tokio::test(start_paused = true)]
    async fn hyper_reset_moves_the_same_sleep() {
        use hyper::rt::Timer;
        let t = LazyTimer;
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
