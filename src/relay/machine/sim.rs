//! A model of a Postgres backend's main loop for the machine's tests: it reads frontend
//! messages in order and answers as `PostgresMain` does — simple and extended queries,
//! skip-till-Sync after an extended-protocol error, COPY FROM STDIN ignoring Sync and
//! Flush, COPY TO STDOUT, named statements and their errors, transaction blocks. Query
//! texts are a tiny language: `ok`, `err`, `begin`, `commit`, `copy in`, `copy out`,
//! `notice`; anything else behaves like `ok`.

use std::collections::HashSet;

use crate::protocol::tags::{backend, frontend};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    No,
    /// Started by a simple Query or an Execute.
    In {
        extended: bool,
    },
}

pub struct Sim {
    input: Vec<u8>,
    pub output: Vec<u8>,
    status: u8,
    skip: bool,
    copy: Copy,
    statements: HashSet<Vec<u8>>,
    /// Portals bound since the last Sync, and what their statement text was.
    unnamed_text: Vec<u8>,
    portal_text: Vec<u8>,
    pub terminated: bool,
}

fn msg(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

fn error(code: &str, text: &str, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    for field in ["SERROR".to_owned(), format!("C{code}"), format!("M{text}")] {
        body.extend_from_slice(field.as_bytes());
        body.push(0);
    }
    body.push(0);
    msg(backend::ERROR_RESPONSE, &body, out);
}

fn cstr(body: &[u8]) -> (&[u8], &[u8]) {
    match body.iter().position(|b| *b == 0) {
        Some(i) => (&body[..i], &body[i + 1..]),
        None => (body, &[]),
    }
}

impl Default for Sim {
    fn default() -> Self {
        Sim {
            input: Vec::new(),
            output: Vec::new(),
            status: b'I',
            skip: false,
            copy: Copy::No,
            statements: HashSet::new(),
            unnamed_text: Vec::new(),
            portal_text: Vec::new(),
            terminated: false,
        }
    }
}

impl Sim {
    /// Takes bytes from the proxy and answers every complete message among them.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        while !self.terminated && self.input.len() >= 5 {
            let len =
                u32::from_be_bytes([self.input[1], self.input[2], self.input[3], self.input[4]]);
            let total = 1 + len as usize;
            if self.input.len() < total {
                return;
            }
            let message: Vec<u8> = self.input.drain(..total).collect();
            self.message(message[0], &message[5..]);
        }
    }

    /// The backend is between requests, answering nothing, outside any block.
    pub fn idle(&self) -> bool {
        self.input.is_empty() && !self.skip && self.copy == Copy::No && self.status == b'I'
    }

    fn ready(&mut self) {
        let status = self.status;
        msg(backend::READY_FOR_QUERY, &[status], &mut self.output);
    }

    fn fail(&mut self, code: &str, text: &str, extended: bool) {
        error(code, text, &mut self.output);
        if self.status == b'T' {
            self.status = b'E';
        }
        self.skip = extended;
    }

    fn message(&mut self, tag: u8, body: &[u8]) {
        if let Copy::In { extended } = self.copy {
            return self.copy_message(tag, body, extended);
        }
        if tag == frontend::TERMINATE {
            self.terminated = true;
            return;
        }
        if self.skip && tag != frontend::SYNC {
            return;
        }
        match tag {
            frontend::QUERY => self.query(cstr(body).0.to_vec()),
            frontend::PARSE => self.parse(body),
            frontend::BIND => self.bind(body),
            frontend::DESCRIBE => self.describe(body),
            frontend::EXECUTE => self.execute(),
            frontend::CLOSE => {
                let name = cstr(&body[1..]).0.to_vec();
                if body.first() == Some(&b'S') {
                    self.statements.remove(&name);
                }
                msg(b'3', b"", &mut self.output);
            }
            frontend::SYNC => {
                self.skip = false;
                self.ready();
            }
            // Flush, and copy messages outside COPY, are accepted and ignored.
            _ => {}
        }
    }

    fn run_text(&mut self, text: &[u8], extended: bool) -> bool {
        match text {
            b"err" => {
                self.fail("42601", "syntax error", extended);
                return false;
            }
            b"begin" => self.status = b'T',
            b"commit" => self.status = b'I',
            b"copy in" => {
                msg(backend::COPY_IN_RESPONSE, &[0, 0, 0], &mut self.output);
                self.copy = Copy::In { extended };
                return false;
            }
            b"copy out" => {
                msg(b'H', &[0, 0, 0], &mut self.output);
                msg(b'd', b"row\n", &mut self.output);
                msg(b'c', b"", &mut self.output);
            }
            b"notice" => msg(
                backend::NOTICE_RESPONSE,
                b"SNOTICE\0C00000\0Mhi\0\0",
                &mut self.output,
            ),
            _ if self.status == b'E' => {
                self.fail("25P02", "current transaction is aborted", extended);
                return false;
            }
            _ => msg(b'D', b"\0\x01\0\0\0\x011", &mut self.output),
        }
        msg(b'C', b"SELECT 1\0", &mut self.output);
        true
    }

    fn query(&mut self, text: Vec<u8>) {
        for statement in text.split(|b| *b == b';') {
            let statement = statement.trim_ascii();
            if statement.is_empty() {
                continue;
            }
            if !self.run_text(statement, false) {
                break;
            }
        }
        if self.copy == Copy::No {
            self.ready();
        }
    }

    fn parse(&mut self, body: &[u8]) {
        let (name, rest) = cstr(body);
        let text = cstr(rest).0.to_vec();
        if text == b"err" {
            return self.fail("42601", "syntax error", true);
        }
        if !name.is_empty() && !self.statements.insert(name.to_vec()) {
            return self.fail("42P05", "prepared statement already exists", true);
        }
        if name.is_empty() {
            self.unnamed_text = text;
        }
        msg(b'1', b"", &mut self.output);
    }

    fn bind(&mut self, body: &[u8]) {
        let (_, rest) = cstr(body);
        let statement = cstr(rest).0;
        if !statement.is_empty() && !self.statements.contains(statement) {
            return self.fail("26000", "prepared statement does not exist", true);
        }
        self.portal_text = match statement.is_empty() {
            true => self.unnamed_text.clone(),
            false => Vec::new(),
        };
        msg(b'2', b"", &mut self.output);
    }

    fn describe(&mut self, body: &[u8]) {
        let name = cstr(&body[1..]).0;
        if body.first() == Some(&b'S') && !name.is_empty() && !self.statements.contains(name) {
            return self.fail("26000", "prepared statement does not exist", true);
        }
        msg(b'n', b"", &mut self.output);
    }

    fn execute(&mut self) {
        let text = std::mem::take(&mut self.portal_text);
        self.run_text(&text, true);
    }

    fn copy_message(&mut self, tag: u8, body: &[u8], extended: bool) {
        let end = |sim: &mut Sim| {
            sim.copy = Copy::No;
            if !extended {
                sim.ready();
            }
        };
        match tag {
            frontend::COPY_DATA if body == b"bad" => {
                self.fail("22P02", "invalid input syntax", extended);
                end(self);
            }
            frontend::COPY_DATA | frontend::SYNC | frontend::FLUSH => {}
            frontend::COPY_DONE => {
                msg(b'C', b"COPY 1\0", &mut self.output);
                end(self);
            }
            frontend::COPY_FAIL => {
                self.fail("57014", "COPY from stdin failed", extended);
                end(self);
            }
            _ => {
                self.fail(
                    "08P01",
                    "unexpected message type during COPY from stdin",
                    extended,
                );
                end(self);
            }
        }
    }
}
