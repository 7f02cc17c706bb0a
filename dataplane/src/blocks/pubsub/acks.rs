//! Acks of one subscription, coalesced: deliveries that finish while an
//! ack is on its way to the broker are acked together by the next one
//! (one `XACK` of many ids on Redis, one transaction on SQLite), instead
//! of a round trip each. The first settler to find no ack in flight leads:
//! it sends what is queued, then what queued meanwhile, until nothing is
//! left; every settler waits for the ack that carried its id, so a message
//! still counts as held until the broker has its ack (at-least-once is
//! unchanged). Serial deliveries see no difference: one ack each, sent at
//! once.

use std::future::Future;
use std::sync::Mutex;

use skiff_components::pubsub::PubSubError;
use tokio::sync::oneshot;

/// What waits for the next ack.
#[derive(Default)]
struct Queue {
    ids: Vec<String>,
    waiters: Vec<oneshot::Sender<Result<(), PubSubError>>>,
    /// A leader is sending; what is queued goes with its next ack.
    sending: bool,
}

#[derive(Default)]
pub(super) struct Acks {
    queue: Mutex<Queue>,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Acks `id` with `send` (the subscription's `ack` of a batch), together
    /// with whatever else is waiting, and returns that ack's result.
    pub(super) async fn ack<F, Fut>(&self, id: &str, send: F) -> Result<(), PubSubError>
    where
        F: Fn(Vec<String>) -> Fut,
        Fut: Future<Output = Result<(), PubSubError>>,
    {
        let waiter = {
            let mut q = self.lock();
            q.ids.push(id.to_owned());
            if q.sending {
                let (tx, rx) = oneshot::channel();
                q.waiters.push(tx);
                Some(rx)
            } else {
                q.sending = true;
                None
            }
        };
        if let Some(rx) = waiter {
            return rx.await.unwrap_or_else(|_| {
                Err(PubSubError::Broker(
                    "the ack carrying this message was dropped".into(),
                ))
            });
        }
        // The leader: its own id goes with the first ack it sends, whose
        // result is its answer. If this future is dropped mid-way, `Lead`
        // hands the duty back so the queue is not stranded.
        let guard = Lead(self);
        let mut mine = None;
        loop {
            let (ids, waiters) = {
                let mut q = self.lock();
                if q.ids.is_empty() {
                    q.sending = false;
                    break;
                }
                (std::mem::take(&mut q.ids), std::mem::take(&mut q.waiters))
            };
            let r = send(ids).await;
            for w in waiters {
                let _ = w.send(r.clone());
            }
            mine.get_or_insert(r);
        }
        // Done: the queue was empty and `sending` is off; another settler
        // may already lead, so the guard must not touch it.
        std::mem::forget(guard);
        // The first pass always sends: the queue held this id.
        mine.unwrap_or(Ok(()))
    }
}

/// The leader's duty: if its future is dropped while sending, the next
/// settler must lead (its waiters see their senders dropped and the
/// broker redelivers what was not acked).
struct Lead<'a>(&'a Acks);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.sending = false;
        // Those queued behind a dropped leader: nobody will send for them.
        q.ids.clear();
        q.waiters.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// An ack of `ids` that takes 10 ms (a broker round trip), recording
    /// each batch.
    type Sent = std::pin::Pin<Box<dyn Future<Output = Result<(), PubSubError>> + Send>>;

    fn broker(batches: &Arc<Mutex<Vec<Vec<String>>>>) -> impl Fn(Vec<String>) -> Sent + use<> {
        let batches = batches.clone();
        move |ids| {
            let batches = batches.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                batches.lock().expect("batches").push(ids);
                Ok(())
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_acks_share_round_trips_and_serial_ones_do_not() {
        let acks = Arc::new(Acks::default());
        let batches = Arc::new(Mutex::new(Vec::new()));
        // Serial: one ack each, at once.
        for i in 0..3 {
            acks.ack(&format!("s{i}"), broker(&batches))
                .await
                .expect("acked");
        }
        assert_eq!(batches.lock().expect("b").len(), 3);
        batches.lock().expect("b").clear();
        // 50 at once: the first goes alone, the other 49 ride the next one.
        let done = Arc::new(AtomicUsize::new(0));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..50 {
            let (acks, send, done) = (acks.clone(), broker(&batches), done.clone());
            set.spawn(async move {
                acks.ack(&format!("c{i}"), send).await.expect("acked");
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        while set.join_next().await.is_some() {}
        assert_eq!(done.load(Ordering::Relaxed), 50);
        let b = batches.lock().expect("b");
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 50, "{b:?}");
        assert!(b.len() <= 3, "{} round trips for 50 acks", b.len());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_ack_fails_every_message_it_carried() {
        let acks = Arc::new(Acks::default());
        let fail = |_ids: Vec<String>| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(PubSubError::Broker("down".into()))
        };
        let mut set = tokio::task::JoinSet::new();
        for i in 0..5 {
            let acks = acks.clone();
            set.spawn(async move { acks.ack(&format!("f{i}"), fail).await });
        }
        while let Some(r) = set.join_next().await {
            assert!(r.expect("task").is_err());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_dropped_mid_ack_leaves_the_next_settler_to_lead() {
        let acks = Arc::new(Acks::default());
        let batches = Arc::new(Mutex::new(Vec::new()));
        let slow = |_ids: Vec<String>| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        };
        let cut = tokio::time::timeout(Duration::from_millis(5), acks.ack("gone", slow)).await;
        assert!(cut.is_err(), "still sending when dropped");
        acks.ack("next", broker(&batches)).await.expect("acked");
        assert_eq!(
            batches.lock().expect("b").as_slice(),
            [vec!["next".to_owned()]]
        );
    }
}
