//! The answers the attached server still owes, in order, one entry per message sent to it,
//! and the protocol's rules for them: which server message fits the entry at the front,
//! what completes it, what an error skips (everything up to the next Sync, for the
//! extended protocol), which Syncs COPY FROM STDIN makes the server ignore. An answer
//! that fits nothing owed is the server's fault.

use std::collections::VecDeque;

use crate::prepared::{ClientStatements, Entry, Expects, Fate, Kind, Rename, ServerStatements};
use crate::protocol::answers::{Answer, Fit};
use crate::protocol::tags::backend;

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// pgwarden sent the message this answers; the client must not see it.
    Swallow,
    /// An error pgwarden provoked: it names the client's statement on its way.
    Rename(Rename),
    /// Nothing owed can contain this message.
    Wrong,
}

/// Whether the server skips what it is sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Skip {
    #[default]
    No,
    /// An extended-protocol message failed and no Sync had been sent after it: the server
    /// discards every message until the next Sync.
    ToSync,
}

/// The queue of answers owed.
#[derive(Debug, Default)]
pub struct Owed {
    queue: VecDeque<Entry>,
    /// CommandCompletes already seen in the Query at the front.
    completes_seen: u32,
    skip: Skip,
}

impl Expects for Owed {
    fn push(&mut self, entry: Entry) {
        self.queue.push_back(entry);
    }

    fn is_empty(&self) -> bool {
        Owed::is_empty(self)
    }
}

impl Owed {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn front(&self) -> Option<&Entry> {
        self.queue.front()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Messages sent now are discarded by the server until a Sync.
    pub fn skipping(&self) -> bool {
        self.skip == Skip::ToSync
    }

    /// A Sync was sent: the server stops skipping at it.
    pub fn synced(&mut self) {
        self.skip = Skip::No;
    }

    /// The answer pgwarden must write now, if one is due (everything before it answered).
    pub fn due_write(&mut self) -> Option<u8> {
        match self.queue.front()?.kind {
            Kind::Write(tag) => {
                self.queue.pop_front();
                Some(tag)
            }
            Kind::Await(..) => None,
        }
    }

    /// Decides what becomes of a server message and moves the queue on. Notices,
    /// notifications and parameter reports are not asked about: they answer nothing.
    /// `client`: the client's statements, where they follow it (`None`: nothing of theirs
    /// can be taken back, and no map is made for every answer).
    pub fn on_server(
        &mut self,
        tag: u8,
        client: Option<&mut ClientStatements>,
        server: &mut ServerStatements,
    ) -> Verdict {
        let Some(Entry {
            kind: Kind::Await(answer, fate),
            ..
        }) = self.queue.front_mut()
        else {
            // A FATAL error can come at any time (the server is going away).
            return match tag {
                backend::ERROR_RESPONSE => Verdict::Forward,
                _ => Verdict::Wrong,
            };
        };
        let answer = *answer;
        let fit = answer.fit(tag);
        let verdict = match (fit, fate) {
            (Fit::Wrong, _) => return Verdict::Wrong,
            (_, Fate::Pass) | (Fit::Error, Fate::Swallow) => Verdict::Forward,
            (_, Fate::Swallow) => Verdict::Swallow,
            (Fit::Error, Fate::Fail(rename)) => Verdict::Rename(rename.clone()),
            // What was sent to fail did not: the server is not what pgwarden believes.
            (_, Fate::Fail(_)) => return Verdict::Wrong,
            (_, Fate::Rewritten { swallow, fail }) => {
                let at = self.completes_seen;
                match (tag, fail) {
                    (backend::COMMAND_COMPLETE, Some((failing, _))) if *failing == at => {
                        return Verdict::Wrong
                    }
                    (backend::COMMAND_COMPLETE, _) => {
                        self.completes_seen = at.saturating_add(1);
                        let bit = 1u64.checked_shl(at).unwrap_or(0);
                        match *swallow & bit {
                            0 => Verdict::Forward,
                            _ => Verdict::Swallow,
                        }
                    }
                    (backend::ERROR_RESPONSE, Some((failing, rename))) if *failing == at => {
                        Verdict::Rename(rename.clone())
                    }
                    _ => Verdict::Forward,
                }
            }
        };
        match fit {
            Fit::Error => self.on_error(answer, client, server),
            Fit::Completes => self.complete(),
            Fit::Part | Fit::Wrong => {}
        }
        verdict
    }

    /// The front entry is answered as it should be: its changes stand.
    fn complete(&mut self) {
        self.queue.pop_front();
        self.completes_seen = 0;
    }

    /// An ErrorResponse for the front entry: what it changed is taken back; in the extended
    /// protocol the server then skips every message until Sync, so those are taken back too
    /// (last first) and their answers will never come.
    fn on_error(
        &mut self,
        answer: Answer,
        client: Option<&mut ClientStatements>,
        server: &mut ServerStatements,
    ) {
        let mut none = ClientStatements::default();
        let client = client.unwrap_or(&mut none);
        if !answer.extended() {
            // Query or Sync: still completed by its ReadyForQuery; the statements from the
            // failing one on did not run.
            if let Some(front) = self.queue.front_mut() {
                front.take_back(self.completes_seen, client, server);
            }
            return;
        }
        let sync = self
            .queue
            .iter()
            .position(|e| e.answer() == Some(Answer::Sync));
        if sync.is_none() {
            self.skip = Skip::ToSync;
        }
        let until = sync.unwrap_or(self.queue.len());
        let mut skipped: Vec<Entry> = self.queue.drain(..until).collect();
        while let Some(mut entry) = skipped.pop() {
            entry.take_back(0, client, server);
        }
        self.completes_seen = 0;
    }

    /// COPY FROM STDIN began for the front entry: the server reads everything sent after
    /// it in COPY mode, where it ignores Sync. `false` when something else was sent after
    /// it: the server will fail the COPY on it, and what it then owes cannot be known.
    pub fn on_copy_in(&mut self) -> bool {
        while let Some(second) = self.queue.get(1) {
            match second.answer() {
                Some(Answer::Sync) => {
                    self.queue.remove(1);
                }
                _ => return false,
            }
        }
        true
    }

    /// Drops every entry, taking back their changes (the server is going away).
    pub fn abandon(&mut self, client: &mut ClientStatements, server: &mut ServerStatements) {
        while let Some(mut entry) = self.queue.pop_back() {
            entry.take_back(0, client, server);
        }
        self.completes_seen = 0;
        self.skip = Skip::No;
    }

    /// Frees a queue grown by a long pipeline (a short one is kept: it is reused).
    pub fn release_memory(&mut self) {
        if self.queue.capacity() > 8 {
            self.queue = VecDeque::new();
        }
    }

    /// The first Sync still owed is the last thing owed.
    pub fn sync_is_last(&self) -> bool {
        let sync = self
            .queue
            .iter()
            .position(|e| e.answer() == Some(Answer::Sync));
        sync.is_some_and(|i| i + 1 == self.queue.len())
    }

    /// The answer at the front is swallowed instead of passed on.
    pub fn swallow_front(&mut self) {
        if let Some(Entry {
            kind: Kind::Await(_, fate),
            ..
        }) = self.queue.front_mut()
        {
            *fate = Fate::Swallow;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prepared::Undo;

    fn run(owed: &mut Owed, tags: &[u8]) -> Vec<Verdict> {
        let (mut client, mut server) = (ClientStatements::default(), ServerStatements::default());
        tags.iter()
            .map(|&tag| owed.on_server(tag, Some(&mut client), &mut server))
            .collect()
    }

    #[test]
    fn injected_parse_is_swallowed_and_writes_wait_their_turn() {
        let mut owed = Owed::default();
        owed.push(Entry::swallow(Answer::Parse));
        owed.push(Entry::pass(Answer::Bind));
        owed.push(Entry::pass(Answer::Execute));
        owed.push(Entry::new(Kind::Write(b'3')));
        owed.push(Entry::pass(Answer::Sync));
        assert_eq!(owed.due_write(), None);
        let verdicts = run(&mut owed, b"12DDC");
        assert_eq!(verdicts[0], Verdict::Swallow);
        assert!(verdicts[1..].iter().all(|v| *v == Verdict::Forward));
        assert_eq!(owed.due_write(), Some(b'3'));
        assert_eq!(run(&mut owed, b"Z"), [Verdict::Forward]);
        assert!(owed.is_empty());
    }

    #[test]
    fn an_error_skips_to_sync_and_takes_back_what_was_skipped() {
        let mut owed = Owed::default();
        let (mut client, mut server) = (ClientStatements::default(), ServerStatements::default());
        owed.push(Entry::pass(Answer::Bind));
        owed.push(Entry::pass(Answer::Parse).undo(Undo::ClientRemove(b"s2"[..].into())));
        owed.push(Entry::new(Kind::Write(b'1')));
        owed.push(Entry::pass(Answer::Query));
        owed.push(Entry::pass(Answer::Sync));
        assert_eq!(
            owed.on_server(b'E', Some(&mut client), &mut server),
            Verdict::Forward
        );
        assert_eq!(owed.due_write(), None, "skipped writes are never written");
        assert_eq!(owed.len(), 1, "the Query before the Sync was skipped too");
        assert!(!owed.skipping());
        assert_eq!(run(&mut owed, b"Z"), [Verdict::Forward]);
        assert!(owed.is_empty());
    }

    #[test]
    fn an_error_before_any_sync_skips_what_comes_later() {
        let mut owed = Owed::default();
        owed.push(Entry::pass(Answer::Parse));
        assert_eq!(run(&mut owed, b"E"), [Verdict::Forward]);
        assert!(owed.is_empty() && owed.skipping());
        owed.synced();
        assert!(!owed.skipping());
    }

    #[test]
    fn answers_that_fit_nothing_owed_are_wrong() {
        let mut owed = Owed::default();
        assert_eq!(run(&mut owed, b"Z"), [Verdict::Wrong]);
        owed.push(Entry::pass(Answer::Parse));
        assert_eq!(run(&mut owed, b"2"), [Verdict::Wrong]);
        assert_eq!(run(&mut owed, b"E"), [Verdict::Forward]);
    }

    #[test]
    fn a_provoked_error_is_renamed_and_a_success_is_wrong() {
        let rename = Rename {
            provoked: b"pgwarden.absent"[..].into(),
            client: b"s1"[..].into(),
        };
        let mut owed = Owed::default();
        owed.push(Entry::new(Kind::Await(
            Answer::Describe,
            Fate::Fail(rename.clone()),
        )));
        owed.push(Entry::pass(Answer::Sync));
        assert_eq!(
            run(&mut owed, b"EZ"),
            [Verdict::Rename(rename.clone()), Verdict::Forward]
        );
        owed.push(Entry::new(Kind::Await(
            Answer::Describe,
            Fate::Fail(rename),
        )));
        assert_eq!(run(&mut owed, b"n"), [Verdict::Wrong]);
    }

    #[test]
    fn a_rewritten_query_swallows_only_the_added_completes() {
        let mut owed = Owed::default();
        let fate = Fate::Rewritten {
            swallow: 0b01,
            fail: None,
        };
        owed.push(Entry::new(Kind::Await(Answer::Query, fate)));
        let verdicts = run(&mut owed, b"CTDCZ");
        assert_eq!(verdicts[0], Verdict::Swallow);
        assert!(verdicts[1..].iter().all(|v| *v == Verdict::Forward));
        assert!(owed.is_empty());
    }

    #[test]
    fn copy_in_drops_the_syncs_sent_after_its_request_only() {
        let mut owed = Owed::default();
        owed.push(Entry::pass(Answer::Execute));
        owed.push(Entry::pass(Answer::Sync));
        assert!(owed.on_copy_in());
        assert_eq!(owed.len(), 1);
        owed.push(Entry::pass(Answer::Query));
        assert!(!owed.on_copy_in());
    }
}
