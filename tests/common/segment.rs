//! The segmentation harness: protocol exchanges replayed after login against Postgres and
//! through pgwarden, their frontend bytes written whole, byte by byte, or cut at random
//! points, and the backend's answers compared message by message.
//!
//! An [`Exchange`] is a list of [`Step`]s: bytes to send and what ends the answer
//! ([`Until`]). Answers are compared byte for byte, except that BackendKeyData is dropped,
//! ParameterStatus messages are compared as a sorted list per step (a proxy may send them
//! in another order), and the sender pid of a NotificationResponse is zeroed.
//!
//! Cutting: [`Cut::Bytewise`] writes the first 64 and the last 16 bytes of every message
//! one byte per write (every header split, every split near a boundary) and the middle of
//! long messages 8 KiB at a time, so an 8 MB Bind takes a thousand writes, not eight
//! million. [`Cut::Random`] cuts each step at random points drawn from its seed. Where a
//! cut must be a read boundary on the other side (right after a message header, and at a
//! quarter of the random cuts), the writer pauses 1 ms: that pause only forces the split, it
//! synchronises nothing.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::raw::{message, startup, PROTOCOL_3_0};

/// How long one step's answer may take (every exchange here answers in milliseconds).
pub const STEP_DEADLINE: Duration = Duration::from_secs(5);
/// How long writing one step may take (a peer that stops reading blocks the writer).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Bytes of a message's start and end written one per write by [`Cut::Bytewise`].
const BYTEWISE_HEAD: usize = 64;
const BYTEWISE_TAIL: usize = 16;
/// The chunk [`Cut::Bytewise`] writes the middle of a long message in.
const BYTEWISE_CHUNK: usize = 8192;
/// At most this many random cuts per step.
const MAX_RANDOM_CUTS: usize = 200;
/// The pause that makes a cut a read boundary.
const BOUNDARY_PAUSE: Duration = Duration::from_millis(1);

/// What ends the answer to a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// This many ReadyForQuery messages.
    Ready(usize),
    /// The first message with this tag (CopyInResponse `G`, ErrorResponse `E`, …).
    Tag(u8),
    /// The first message with any of these tags.
    OneOf(&'static [u8]),
    /// The peer closing the connection.
    Closed,
    /// Nothing is read: the next step's answer includes whatever this one produced.
    Nothing,
}

/// Bytes to send and what ends their answer.
#[derive(Clone, Debug)]
pub struct Step {
    pub send: Vec<u8>,
    pub until: Until,
}

pub fn step(send: Vec<u8>, until: Until) -> Step {
    Step { send, until }
}

/// A named protocol exchange. `setup` is SQL run on a separate direct connection before
/// every replay (tables to start from), so that the replays see the same data.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub name: String,
    pub setup: String,
    pub steps: Vec<Step>,
}

pub fn exchange(name: &str, setup: &str, steps: Vec<Step>) -> Exchange {
    Exchange {
        name: name.to_owned(),
        setup: setup.to_owned(),
        steps,
    }
}

/// How a step's bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    Whole,
    Bytewise,
    Random(u64),
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cut::Whole => f.write_str("whole"),
            Cut::Bytewise => f.write_str("byte by byte"),
            Cut::Random(seed) => write!(f, "cut at random points (seed {seed})"),
        }
    }
}

/// One backend message as compared: its tag and body (normalised, see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = self.tag as char;
        match self.tag {
            b'E' | b'N' => {
                let mut fields: Vec<String> = super::raw::fields(&self.body)
                    .into_iter()
                    .map(|(code, value)| format!("{}={value:?}", code as char))
                    .collect();
                fields.sort();
                write!(f, "{tag}[{}]", fields.join(" "))
            }
            b'Z' => write!(f, "Z{}", self.body.first().map_or('?', |b| *b as char)),
            _ if self.body.len() <= 48 => {
                write!(f, "{tag}{:?}", String::from_utf8_lossy(&self.body))
            }
            _ => write!(
                f,
                "{tag}<{} bytes, {:?}…, hash {:016x}>",
                self.body.len(),
                String::from_utf8_lossy(&self.body[..32]),
                hash(&self.body)
            ),
        }
    }
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The answer to one step: its messages in order (ParameterStatus left out) and its
/// ParameterStatus messages, sorted; `closed` when the connection ended during the step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub messages: Vec<Msg>,
    pub parameter_status: Vec<Msg>,
    pub closed: bool,
}

/// A logged-in connection whose answers are read into [`Answer`]s.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl Conn {
    /// Logs in as `user` to `db` at `addr`, which must not ask for a password; the login
    /// messages are discarded.
    pub async fn login(addr: SocketAddr, user: &str, db: &str) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
            closed: false,
        };
        let hello = startup(PROTOCOL_3_0, &[("user", user), ("database", db)]);
        conn.stream
            .write_all(&hello)
            .await
            .map_err(|e| e.to_string())?;
        let answer = conn.read_answer(Until::Ready(1), STEP_DEADLINE).await?;
        if let Some(err) = answer.messages.iter().find(|m| m.tag == b'E') {
            return Err(format!("login to {addr} failed: {err:?}"));
        }
        Ok(conn)
    }

    /// Writes `bytes` as `cut` says while reading the answer `until` asks for.
    pub async fn exchange_step(
        &mut self,
        bytes: &[u8],
        until: Until,
        cut: Cut,
        salt: u64,
    ) -> Result<Answer, String> {
        let writes = plan(bytes, cut, salt);
        let Conn {
            stream,
            buf,
            closed,
        } = self;
        let (mut reader, mut writer) = stream.split();
        let write = async {
            tokio::time::timeout(WRITE_DEADLINE, async {
                for (chunk, pause) in writes {
                    writer
                        .write_all(&bytes[chunk])
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    if pause {
                        tokio::time::sleep(BOUNDARY_PAUSE).await;
                    }
                }
                Ok::<(), String>(())
            })
            .await
            .unwrap_or_else(|_| Err(format!("the peer read nothing for {WRITE_DEADLINE:?}")))
        };
        let read = read_answer(&mut reader, buf, closed, until, STEP_DEADLINE);
        let (written, answer) = tokio::join!(write, read);
        let answer = answer?;
        // A peer that closes after a Terminate may make the last write fail; only a
        // failed write before the answer ended is a failure.
        if let Err(e) = written {
            if !answer.closed {
                return Err(e);
            }
        }
        Ok(answer)
    }

    /// Reads the answer `until` asks for, within `deadline`.
    pub async fn read_answer(
        &mut self,
        until: Until,
        deadline: Duration,
    ) -> Result<Answer, String> {
        let (mut reader, _) = self.stream.split();
        read_answer(
            &mut reader,
            &mut self.buf,
            &mut self.closed,
            until,
            deadline,
        )
        .await
    }

    /// Bytes received but not (yet) a whole message.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// Writes `bytes` in one write.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        match tokio::time::timeout(WRITE_DEADLINE, self.stream.write_all(bytes)).await {
            Ok(written) => written.map_err(|e| format!("write: {e}")),
            Err(_) => Err(format!("the peer read nothing for {WRITE_DEADLINE:?}")),
        }
    }

    /// Writes `bytes` in the given pieces (lengths; the rest in one last write), pausing
    /// `pause` after each: the pause is what makes each piece a read of its own for the
    /// peer.
    pub async fn send_in_pieces(
        &mut self,
        bytes: &[u8],
        pieces: &[usize],
        pause: Duration,
    ) -> Result<(), String> {
        let mut at = 0;
        for len in pieces {
            let end = (at + len).min(bytes.len());
            self.send(&bytes[at..end]).await?;
            at = end;
            tokio::time::sleep(pause).await;
        }
        self.send(&bytes[at..]).await
    }
}

/// Reads messages into an answer until `until` is met; an error when the deadline passes
/// or the connection closes before it is met (unless `until` is [`Until::Closed`]).
async fn read_answer<R: AsyncReadExt + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    closed: &mut bool,
    until: Until,
    deadline: Duration,
) -> Result<Answer, String> {
    let mut answer = Answer::default();
    if until == Until::Nothing {
        return Ok(answer);
    }
    let mut readies = 0;
    let work = async {
        loop {
            while let Some(msg) = take_message(buf)? {
                let tag = msg.tag;
                keep(&mut answer, msg);
                match until {
                    Until::Ready(n) if tag == b'Z' => {
                        readies += 1;
                        if readies == n {
                            return Ok(());
                        }
                    }
                    Until::Tag(t) if tag == t => return Ok(()),
                    Until::OneOf(tags) if tags.contains(&tag) => return Ok(()),
                    _ => {}
                }
            }
            if *closed {
                answer.closed = true;
                return if until == Until::Closed {
                    Ok(())
                } else {
                    Err(format!("connection closed before {until:?}"))
                };
            }
            // Straight into the heap buffer: a 64 KiB array here would live in every
            // future that awaits this one.
            buf.reserve(65536);
            if let Ok(0) | Err(_) = reader.read_buf(buf).await {
                *closed = true;
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(())) => Ok(answer),
        Ok(Err(why)) => Err(format!("{why}; answer so far: {:?}", answer.messages)),
        Err(_) => Err(format!(
            "no {until:?} within {deadline:?}; answer so far: {:?}",
            answer.messages
        )),
    }
}

/// Takes one whole message off the front of `buf`, normalised.
fn take_message(buf: &mut Vec<u8>) -> Result<Option<Msg>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(format!(
            "backend message {:?} of length {len}",
            buf[0] as char
        ));
    }
    if buf.len() < 1 + len {
        return Ok(None);
    }
    let tag = buf[0];
    let mut body = buf[5..1 + len].to_vec();
    buf.drain(..1 + len);
    if tag == b'A' && body.len() >= 4 {
        body[..4].copy_from_slice(&[0; 4]);
    }
    Ok(Some(Msg { tag, body }))
}

fn keep(answer: &mut Answer, msg: Msg) {
    match msg.tag {
        b'K' => {}
        b'S' => {
            answer.parameter_status.push(msg);
            answer.parameter_status.sort_by(|a, b| a.body.cmp(&b.body));
        }
        _ => answer.messages.push(msg),
    }
}

/// Where the frontend messages of `bytes` start and end; one range for bytes that are
/// not a sequence of whole messages.
pub fn message_bounds(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut bounds = Vec::new();
    let mut at = 0;
    while at + 5 <= bytes.len() {
        let len = u32::from_be_bytes([bytes[at + 1], bytes[at + 2], bytes[at + 3], bytes[at + 4]]);
        let end = at + 1 + len as usize;
        if len < 4 || end > bytes.len() {
            break;
        }
        bounds.push((at, end));
        at = end;
    }
    if at < bytes.len() {
        bounds.push((at, bytes.len()));
    }
    bounds
}

/// The writes of `bytes` for `cut`: ranges in order covering it, each with whether a
/// pause follows.
pub fn plan(bytes: &[u8], cut: Cut, salt: u64) -> Vec<(std::ops::Range<usize>, bool)> {
    let mut cuts: Vec<(usize, bool)> = match cut {
        Cut::Whole => Vec::new(),
        Cut::Bytewise => bytewise_cuts(bytes),
        Cut::Random(seed) => random_cuts(bytes.len(), seed ^ salt),
    };
    cuts.retain(|(at, _)| *at > 0 && *at < bytes.len());
    cuts.sort();
    cuts.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 |= b.1;
            true
        } else {
            false
        }
    });
    let mut writes = Vec::new();
    let mut from = 0;
    for (at, pause) in cuts {
        writes.push((from..at, pause));
        from = at;
    }
    writes.push((from..bytes.len(), false));
    writes
}

fn bytewise_cuts(bytes: &[u8]) -> Vec<(usize, bool)> {
    let mut cuts = Vec::new();
    for (start, end) in message_bounds(bytes) {
        let head_end = end.min(start + BYTEWISE_HEAD);
        for at in start + 1..=head_end {
            // Right after the header: the body must come in a later read.
            cuts.push((at, at == start + 5));
        }
        let mut at = head_end + BYTEWISE_CHUNK;
        while at < end.saturating_sub(BYTEWISE_TAIL) {
            cuts.push((at, false));
            at += BYTEWISE_CHUNK;
        }
        for at in end.saturating_sub(BYTEWISE_TAIL).max(head_end)..end {
            cuts.push((at, false));
        }
        cuts.push((end, false));
    }
    cuts
}

fn random_cuts(len: usize, seed: u64) -> Vec<(usize, bool)> {
    if len < 2 {
        return Vec::new();
    }
    let mut rng = SplitMix(seed);
    let count = (1 + len / 16).min(MAX_RANDOM_CUTS);
    (0..count)
        .map(|_| {
            let at = 1 + (rng.next() % (len as u64 - 1)) as usize;
            (at, rng.next().is_multiple_of(4))
        })
        .collect()
}

/// splitmix64: a tiny fixed PRNG, so a seed means the same cuts on every machine.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// A stable salt for step `i` of `name`, so that each step of each exchange gets its own
/// random cuts from one seed.
pub fn salt(name: &str, i: usize) -> u64 {
    hash(name.as_bytes()) ^ (i as u64).wrapping_mul(0x9e37_79b9)
}

/// Replays `exchange` on a fresh login at `addr`; the answer of every step.
pub async fn replay(
    addr: SocketAddr,
    user: &str,
    db: &str,
    exchange: &Exchange,
    cut: Cut,
) -> Result<Vec<Answer>, String> {
    let mut conn = Conn::login(addr, user, db).await?;
    let mut answers = Vec::new();
    for (i, step) in exchange.steps.iter().enumerate() {
        let answer = conn
            .exchange_step(&step.send, step.until, cut, salt(&exchange.name, i))
            .await
            .map_err(|why| format!("step {i}: {why}"))?;
        answers.push(answer);
    }
    Ok(answers)
}

/// The rows of the DataRow messages of `answer`, as text (NULL as `None`).
pub fn rows(answer: &Answer) -> Vec<Vec<Option<String>>> {
    answer
        .messages
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| {
            let body = &m.body;
            let n = u16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2;
            (0..n)
                .map(|_| {
                    let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                    at += 4;
                    (len >= 0).then(|| {
                        let value = String::from_utf8_lossy(&body[at..at + len as usize]);
                        at += len as usize;
                        value.into_owned()
                    })
                })
                .collect()
        })
        .collect()
}

/// The tags of `answer`'s messages as a string, each ReadyForQuery followed by its status
/// (`"TDCZI"`).
pub fn shape(answer: &Answer) -> String {
    let mut out = String::new();
    for m in &answer.messages {
        out.push(m.tag as char);
        if m.tag == b'Z' {
            out.push(m.body.first().map_or('?', |b| *b as char));
        }
    }
    out
}

/// Where `proxied` differs from `direct`, step by step, described for a failure message.
pub fn difference(direct: &[Answer], proxied: &[Answer]) -> Option<String> {
    let mut texts = Vec::new();
    for (i, (d, p)) in direct.iter().zip(proxied).enumerate() {
        if d == p {
            continue;
        }
        let at = d
            .messages
            .iter()
            .zip(&p.messages)
            .position(|(a, b)| a != b)
            .unwrap_or(d.messages.len().min(p.messages.len()));
        let from = at.saturating_sub(2);
        let around = |m: &[Msg]| format!("{:?}", &m[from.min(m.len())..(at + 3).min(m.len())]);
        let mut text = format!(
            "step {i}: message {at} differs\n    Postgres: {} (of {})\n    pgwarden: {} (of {})",
            around(&d.messages),
            d.messages.len(),
            around(&p.messages),
            p.messages.len()
        );
        if d.parameter_status != p.parameter_status {
            text.push_str(&format!(
                "\n    ParameterStatus: Postgres {:?}, pgwarden {:?}",
                d.parameter_status, p.parameter_status
            ));
        }
        if d.closed != p.closed {
            text.push_str(&format!(
                "\n    closed: Postgres {}, pgwarden {}",
                d.closed, p.closed
            ));
        }
        texts.push(text);
    }
    if direct.len() != proxied.len() {
        texts.push(format!(
            "{} answers from Postgres, {} from pgwarden",
            direct.len(),
            proxied.len()
        ));
    }
    (!texts.is_empty()).then(|| texts.join("\n  "))
}

// Frontend messages the prepared-statement helpers do not have.

pub fn copy_data(data: &[u8]) -> Vec<u8> {
    message(b'd', data)
}

pub fn copy_done() -> Vec<u8> {
    message(b'c', b"")
}

pub fn copy_fail(why: &str) -> Vec<u8> {
    let mut body = why.as_bytes().to_vec();
    body.push(0);
    message(b'f', &body)
}

pub fn terminate() -> Vec<u8> {
    message(b'X', b"")
}

/// Execute `portal`, at most `max_rows` rows.
pub fn execute_max(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut body = portal.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &body)
}

/// Splits recorded frontend bytes into steps where the driver waited for an answer: after
/// every Sync or Query (answered by one ReadyForQuery), after a Flush (answered up to the
/// RowDescription or NoData of the Describe before it, or an error), and a last one ending
/// with Terminate (answered by the close). Bytes after the last of those form a step that
/// reads nothing.
pub fn steps_of_recording(bytes: &[u8]) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut from = 0;
    for (start, end) in message_bounds(bytes) {
        let until = match bytes[start] {
            b'S' | b'Q' => Until::Ready(1),
            b'H' => Until::OneOf(b"TnE"),
            b'X' => Until::Closed,
            _ => continue,
        };
        steps.push(step(bytes[from..end].to_vec(), until));
        from = end;
    }
    if from < bytes.len() {
        steps.push(step(bytes[from..].to_vec(), Until::Nothing));
    }
    steps
}
