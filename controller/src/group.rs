//! Group commit: callers that arrive while a group is being written wait, and go together
//! in the next group, so that one pass through a lock and one round of syncs serves them
//! all. No thread of its own: the first caller to find no group under way leads (writes a
//! group), and hands the next group to a caller still waiting when it is done.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// A queue of items that are written in groups of at most `max`.
pub struct Group<T, R> {
    max: usize,
    queue: Mutex<Queue<T, R>>,
}

struct Queue<T, R> {
    waiting: Vec<(T, SyncSender<Turn<R>>)>,
    /// A caller is writing a group, or has been told to write the next one.
    leading: bool,
}

/// What a waiting caller is told: its item's result, or that it writes the next group.
enum Turn<R> {
    Done(R),
    Lead,
}

impl<T, R> Group<T, R> {
    pub fn new(max: usize) -> Self {
        Group {
            max: max.max(1),
            queue: Mutex::new(Queue {
                waiting: Vec::new(),
                leading: false,
            }),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue<T, R>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `item` in a group with whatever else is waiting and returns its result.
    /// `write` takes a group and returns one result per item, in order; when it panics (or
    /// returns too few), `lost` stands in for the results it did not give. Blocking.
    pub fn join(&self, item: T, write: impl Fn(Vec<T>) -> Vec<R>, lost: impl Fn() -> R) -> R {
        let (tx, rx) = sync_channel(1);
        let leads = {
            let mut q = self.queue();
            q.waiting.push((item, tx));
            !std::mem::replace(&mut q.leading, true)
        };
        if !leads {
            match rx.recv() {
                Ok(Turn::Done(r)) => return r,
                Ok(Turn::Lead) => {}
                Err(_) => return lost(),
            }
        }
        // This caller's item is the first waiting (a new leader's is: it was told to lead
        // because it was first), so it is in this group.
        self.write_one_group(&write, &lost);
        self.pass_the_lead();
        answer(rx, &lost)
    }

    fn write_one_group(&self, write: &impl Fn(Vec<T>) -> Vec<R>, lost: &impl Fn() -> R) {
        let group: Vec<(T, SyncSender<Turn<R>>)> = {
            let mut q = self.queue();
            let n = q.waiting.len().min(self.max);
            q.waiting.drain(..n).collect()
        };
        let (items, callers): (Vec<T>, Vec<SyncSender<Turn<R>>>) = group.into_iter().unzip();
        let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| write(items)))
            .unwrap_or_else(|_| {
                tracing::error!("writing a commit group panicked: its callers are told it failed");
                Vec::new()
            });
        let mut results = results.into_iter();
        for caller in callers {
            // A caller that went away (it cannot: it waits) needs no answer.
            let _ = caller.send(Turn::Done(results.next().unwrap_or_else(lost)));
        }
    }

    /// Hands the lead to the first caller still waiting, or ends it.
    fn pass_the_lead(&self) {
        let mut q = self.queue();
        match q.waiting.first() {
            // Its channel is empty: a waiting caller has been sent nothing yet.
            Some((_, next)) => {
                let _ = next.send(Turn::Lead);
            }
            None => q.leading = false,
        }
    }
}

fn answer<R>(rx: Receiver<Turn<R>>, lost: &impl Fn() -> R) -> R {
    match rx.recv() {
        Ok(Turn::Done(r)) => r,
        _ => lost(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_caller_gets_its_own_result_and_groups_form_under_load() {
        let group: Arc<Group<u32, u32>> = Arc::new(Group::new(64));
        let writes = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..200u32)
            .map(|i| {
                let (group, writes) = (group.clone(), writes.clone());
                std::thread::spawn(move || {
                    let r = group.join(
                        i,
                        |items| {
                            writes.fetch_add(1, Ordering::SeqCst);
                            // Slow enough that others queue behind the group being written.
                            std::thread::sleep(std::time::Duration::from_millis(2));
                            items.iter().map(|x| x * 10).collect()
                        },
                        || u32::MAX,
                    );
                    assert_eq!(r, i * 10);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("caller");
        }
        let groups = writes.load(Ordering::SeqCst);
        assert!(
            groups < 200,
            "200 callers written in {groups} groups: none shared"
        );
        assert!(!group.queue().leading, "the lead ended with the last group");
    }

    #[test]
    fn a_write_that_panics_fails_its_group_and_not_the_next() {
        let group: Group<u32, Result<u32, String>> = Group::new(8);
        let lost = || Err("lost".to_string());
        let r = group.join(1, |_| panic!("bad write"), lost);
        assert_eq!(r, Err("lost".to_string()));
        let r = group.join(2, |items| items.into_iter().map(Ok).collect(), lost);
        assert_eq!(r, Ok(2));
    }
}
