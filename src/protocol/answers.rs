//! What a server answers to each frontend message: which backend messages may come while
//! it answers, and which one completes the answer. The protocol machine keeps a queue of
//! these, one per message sent, and checks every server message against its front.

use super::tags::backend::*;
use super::tags::{backend, frontend};

/// The frontend message an answer belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    /// A simple Query or a FunctionCall: complete at ReadyForQuery.
    Query,
}

/// Whether a backend message fits the answer at the front of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Part of the answer; more to come.
    Part,
    /// The last message of the answer.
    Completes,
    /// An ErrorResponse: the answer ends with it (a Query or Sync still owes ReadyForQuery).
    Error,
    /// Not something this answer can contain: the server broke the protocol.
    Wrong,
}

impl Answer {
    /// The answer a frontend message is owed, if any (Flush, CopyData, CopyDone, CopyFail
    /// and Terminate are owed nothing by themselves).
    pub fn to(tag: u8) -> Option<Answer> {
        Some(match tag {
            frontend::PARSE => Answer::Parse,
            frontend::BIND => Answer::Bind,
            frontend::DESCRIBE => Answer::Describe,
            frontend::EXECUTE => Answer::Execute,
            frontend::CLOSE => Answer::Close,
            frontend::SYNC => Answer::Sync,
            frontend::QUERY | frontend::FUNCTION_CALL => Answer::Query,
            _ => return None,
        })
    }

    /// How `tag` fits this answer. Notices, notifications and parameter reports may come at
    /// any time and are not asked about.
    pub fn fit(self, tag: u8) -> Fit {
        if tag == backend::ERROR_RESPONSE {
            return Fit::Error;
        }
        let (parts, ends): (&[u8], &[u8]) = match self {
            Answer::Parse => (&[], &[PARSE_COMPLETE]),
            Answer::Bind => (&[], &[BIND_COMPLETE]),
            Answer::Describe => (&[PARAMETER_DESCRIPTION], &[ROW_DESCRIPTION, NO_DATA]),
            Answer::Execute => (
                COPY_PARTS,
                &[COMMAND_COMPLETE, EMPTY_QUERY, PORTAL_SUSPENDED],
            ),
            Answer::Close => (&[], &[CLOSE_COMPLETE]),
            Answer::Sync => (&[], &[backend::READY_FOR_QUERY]),
            Answer::Query => (QUERY_PARTS, &[backend::READY_FOR_QUERY]),
        };
        if ends.contains(&tag) {
            Fit::Completes
        } else if parts.contains(&tag) {
            Fit::Part
        } else {
            Fit::Wrong
        }
    }

    /// Extended-protocol messages: after an error the server skips everything up to the
    /// next Sync.
    pub fn extended(self) -> bool {
        !matches!(self, Answer::Sync | Answer::Query)
    }
}

/// What may come while an Execute runs: rows, and COPY in either direction.
const COPY_PARTS: &[u8] = &[
    backend::DATA_ROW,
    backend::COPY_IN_RESPONSE,
    COPY_OUT_RESPONSE,
    COPY_DATA,
    COPY_DONE,
];

/// What may come while a simple Query runs: any number of statements' results.
const QUERY_PARTS: &[u8] = &[
    ROW_DESCRIPTION,
    backend::DATA_ROW,
    COMMAND_COMPLETE,
    EMPTY_QUERY,
    backend::COPY_IN_RESPONSE,
    COPY_OUT_RESPONSE,
    COPY_DATA,
    COPY_DONE,
    FUNCTION_CALL_RESPONSE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_complete_on_their_own_tags_only() {
        assert_eq!(Answer::Parse.fit(b'1'), Fit::Completes);
        assert_eq!(Answer::Parse.fit(b'2'), Fit::Wrong);
        assert_eq!(Answer::Describe.fit(b't'), Fit::Part);
        assert_eq!(Answer::Describe.fit(b'n'), Fit::Completes);
        assert_eq!(Answer::Execute.fit(b'D'), Fit::Part);
        assert_eq!(Answer::Execute.fit(b's'), Fit::Completes);
        assert_eq!(Answer::Execute.fit(b'Z'), Fit::Wrong);
        assert_eq!(Answer::Query.fit(b'C'), Fit::Part);
        assert_eq!(Answer::Query.fit(b'Z'), Fit::Completes);
        assert_eq!(Answer::Sync.fit(b'E'), Fit::Error);
        assert_eq!(Answer::to(b'H'), None);
        assert_eq!(Answer::to(b'F'), Some(Answer::Query));
    }
}
