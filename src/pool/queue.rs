//! The fair queue: who gets the next free server. Waiters are served round-robin across
//! client identities and first-come-first-served within one, so a flooding application
//! waits behind itself, not in front of everybody else.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

/// A client identity as the queue and `max_server_conn_per_client` know it, worded for
/// messages (`application "billing"`, `user "app"`, `address 10.0.0.7`). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(Arc<str>);

impl ClientId {
    pub fn new(text: impl Into<Arc<str>>) -> ClientId {
        ClientId(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Waiters (`T`) by identity. An identity is in `turn` exactly while it has waiters.
pub(super) struct FairQueue<T> {
    lanes: HashMap<ClientId, VecDeque<(u64, T)>>,
    /// Identities in the order they will be served; one served goes to the back.
    turn: VecDeque<ClientId>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            lanes: HashMap::new(),
            turn: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every waiter, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.lanes
            .values()
            .flat_map(|lane| lane.iter().map(|(_, item)| item))
    }

    /// The identity whose turn is next.
    pub fn first_identity(&self) -> Option<&ClientId> {
        self.turn.front()
    }

    /// Whether `who` has a waiter queued.
    pub fn contains(&self, who: &ClientId) -> bool {
        self.lanes.contains_key(who)
    }

    /// Queues waiter `id` at the back of `who`'s lane; a new identity's turn comes last.
    pub fn push(&mut self, who: &ClientId, id: u64, item: T) {
        let lane = self.lanes.entry(who.clone()).or_default();
        if lane.is_empty() {
            self.turn.push_back(who.clone());
        }
        lane.push_back((id, item));
        self.len += 1;
    }

    /// The first waiter of the first identity in turn that `eligible` accepts (given the
    /// identity and that waiter), without taking it; see [`FairQueue::take`].
    pub fn next(&self, mut eligible: impl FnMut(&ClientId, &T) -> bool) -> Option<usize> {
        self.turn.iter().position(|who| {
            let head = self.lanes.get(who).and_then(|lane| lane.front());
            head.is_some_and(|(_, item)| eligible(who, item))
        })
    }

    /// Takes the first waiter of the identity at `turn` position `at` (from
    /// [`FairQueue::next`]); that identity's next turn comes after everyone else's.
    pub fn take(&mut self, at: usize) -> Option<(ClientId, u64, T)> {
        let who = self.turn.remove(at)?;
        let lane = self.lanes.get_mut(&who)?;
        let (id, item) = lane.pop_front()?;
        self.len -= 1;
        if lane.is_empty() {
            self.lanes.remove(&who);
        } else {
            self.turn.push_back(who.clone());
        }
        Some((who, id, item))
    }

    /// Removes waiter `id` of `who` (it gave up); `None` if it is no longer queued.
    pub fn remove(&mut self, who: &ClientId, id: u64) -> Option<T> {
        let lane = self.lanes.get_mut(who)?;
        let at = lane.iter().position(|(i, _)| *i == id)?;
        let (_, item) = lane.remove(at)?;
        self.len -= 1;
        if lane.is_empty() {
            self.lanes.remove(who);
            self.turn.retain(|w| w != who);
        }
        Some(item)
    }

    /// How many waiters will be served before waiter `id` of `who` if no one else comes:
    /// those ahead in its own lane, and from every other lane as many as get a turn first.
    pub fn ahead(&self, who: &ClientId, id: u64) -> Option<usize> {
        let own = self.lanes.get(who)?.iter().position(|(i, _)| *i == id)?;
        let mine = self.turn.iter().position(|w| w == who)?;
        let others: usize = (self.turn.iter().enumerate())
            .filter(|(_, w)| *w != who)
            .map(|(at, w)| {
                let rounds = own + usize::from(at < mine);
                self.lanes.get(w).map_or(0, |lane| lane.len().min(rounds))
            })
            .sum();
        Some(own + others)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> ClientId {
        ClientId::new(text)
    }

    fn pop(queue: &mut FairQueue<&'static str>) -> Option<&'static str> {
        let at = queue.next(|_, _| true)?;
        queue.take(at).map(|(_, _, item)| item)
    }

    #[test]
    fn round_robin_across_identities_fifo_within_one() {
        let mut queue = FairQueue::default();
        let (flood, quiet) = (id("flood"), id("quiet"));
        for (n, item) in ["f1", "f2", "f3", "f4"].into_iter().enumerate() {
            queue.push(&flood, n as u64, item);
        }
        queue.push(&quiet, 10, "q1");
        queue.push(&quiet, 11, "q2");
        assert_eq!(queue.ahead(&quiet, 10), Some(1));
        assert_eq!(queue.ahead(&quiet, 11), Some(3));
        assert_eq!(queue.ahead(&flood, 3), Some(5));
        assert_eq!(queue.iter().count(), 6);
        assert_eq!(queue.first_identity(), Some(&flood));
        assert!(queue.contains(&quiet) && !queue.contains(&id("other")));
        let order: Vec<_> = std::iter::from_fn(|| pop(&mut queue)).collect();
        assert_eq!(order, ["f1", "q1", "f2", "q2", "f3", "f4"]);
        assert!(queue.is_empty() && queue.turn.is_empty() && queue.lanes.is_empty());
    }

    #[test]
    fn ineligible_identities_are_skipped_and_keep_their_turn() {
        let mut queue = FairQueue::default();
        queue.push(&id("a"), 1, "a1");
        queue.push(&id("b"), 2, "b1");
        let at = queue.next(|who, _| who.as_str() != "a").unwrap();
        assert_eq!(queue.take(at).map(|(_, _, i)| i), Some("b1"));
        assert_eq!(pop(&mut queue), Some("a1"));
        assert_eq!(queue.next(|_, _| true), None);
    }

    #[test]
    fn a_waiter_that_gives_up_leaves_no_trace() {
        let mut queue = FairQueue::default();
        queue.push(&id("a"), 1, "a1");
        queue.push(&id("b"), 2, "b1");
        assert_eq!(queue.remove(&id("a"), 1), Some("a1"));
        assert_eq!(queue.remove(&id("a"), 1), None);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.ahead(&id("b"), 2), Some(0));
        assert_eq!(pop(&mut queue), Some("b1"));
    }
}
