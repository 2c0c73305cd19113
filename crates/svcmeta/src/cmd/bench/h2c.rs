//! A minimal HTTP/2 prior-knowledge (cleartext) client for the parked-queries bench: just
//! enough of RFC 9113 to send many bodiless GETs as streams of one connection and read
//! their answers, holding nothing per stream while they are parked.
//!
//! A real client (the h2 crate, hyper's) keeps a few hundred bytes of state per open stream
//! in this process, where it would count in the RSS delta the bench attributes to the
//! server. This one writes one prepared HEADERS block per stream and, until answers arrive,
//! remembers only how many streams it opened. It sends no request bodies, never uses
//! HPACK's dynamic table and decodes only the `:status` of an answer (the first field of
//! its header block); it is a measuring tool, not a general client.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use anyhow::Context;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;

/// The window this client gives every stream: far more than one answer needs, so no
/// stream ever waits for a WINDOW_UPDATE.
const STREAM_WINDOW: u32 = 1 << 24;

/// The connection's receive window, raised once to the protocol's maximum and topped up
/// after every [`WINDOW_TOP_UP`] bytes read.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
const WINDOW_TOP_UP: u32 = 1 << 26;

/// One answer read from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The `:status` (0 when it was not one of the statically indexed codes or a plain literal).
    pub(crate) status: u16,
    /// The body, whole.
    pub(crate) body: Vec<u8>,
}

/// An HTTP/2 connection over a blocking socket.
pub(crate) struct Connection {
    stream: TcpStream,
    authority: String,
    /// The next client stream id (odd, rising).
    next_stream: u32,
    /// Bytes of DATA read since the last connection WINDOW_UPDATE.
    unacknowledged: u32,
    /// Bytes read and not yet parsed start at `buffer[start]`.
    buffer: Vec<u8>,
    start: usize,
}

impl Connection {
    /// Connects, sends the preface and this client's settings, and opens the connection's
    /// receive window.
    pub(crate) fn open(address: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(address).context("opening an HTTP/2 connection")?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        let mut connection = Connection {
            stream,
            authority: address.to_string(),
            next_stream: 1,
            unacknowledged: 0,
            buffer: Vec::with_capacity(128 * 1024),
            start: 0,
        };
        let mut hello = PREFACE.to_vec();
        let mut settings = Vec::new();
        settings.extend_from_slice(&SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
        settings.extend_from_slice(&STREAM_WINDOW.to_be_bytes());
        frame(&mut hello, SETTINGS, 0, 0, &settings);
        frame(
            &mut hello,
            WINDOW_UPDATE,
            0,
            0,
            &(CONNECTION_WINDOW - 65_535).to_be_bytes(),
        );
        connection
            .stream
            .write_all(&hello)
            .context("sending the HTTP/2 preface")?;
        Ok(connection)
    }

    /// The HPACK header block of `GET path` (no Huffman coding, no dynamic table: the same
    /// bytes serve every stream).
    pub(crate) fn get_block(&self, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http (static table)
        literal(&mut block, 4, path.as_bytes()); // :path
        literal(&mut block, 1, self.authority.as_bytes()); // :authority
        block
    }

    /// Opens `count` streams, each sending `block` (from [`Connection::get_block`]) as a
    /// complete request; returns the id of the first. Nothing is kept per stream.
    pub(crate) fn send_gets(&mut self, block: &[u8], count: usize) -> anyhow::Result<u32> {
        let first = self.next_stream;
        let mut out = Vec::with_capacity(64 * 1024);
        for _ in 0..count {
            frame(
                &mut out,
                HEADERS,
                END_STREAM | END_HEADERS,
                self.next_stream,
                block,
            );
            self.next_stream += 2;
            if out.len() >= 60 * 1024 {
                self.stream.write_all(&out).context("sending requests")?;
                out.clear();
            }
        }
        self.stream.write_all(&out).context("sending requests")?;
        Ok(first)
    }

    /// Reads until `count` streams have ended (answered or reset), answering the server's
    /// settings and pings on the way, and hands each ended stream to `ended` with its id
    /// and its answer (`Err` with the RST_STREAM error code for a reset stream).
    pub(crate) fn read_answers(
        &mut self,
        count: usize,
        mut ended: impl FnMut(u32, Result<Answer, u32>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut open: HashMap<u32, Answer> = HashMap::new();
        let mut done = 0;
        while done < count {
            let (kind, flags, stream_id, payload) = self.read_frame()?;
            match kind {
                SETTINGS if flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[])?,
                PING if flags & ACK == 0 => {
                    let opaque = payload.clone();
                    self.send(PING, ACK, 0, &opaque)?;
                }
                HEADERS | CONTINUATION => {
                    let block = unpad(kind, flags, &payload)?;
                    if kind == HEADERS {
                        // Trailers (a second HEADERS) would not start with a status.
                        open.entry(stream_id).or_insert(Answer {
                            status: status_of(block),
                            body: Vec::new(),
                        });
                    }
                    if flags & END_STREAM != 0 {
                        let answer = open.remove(&stream_id).context("answer without head")?;
                        ended(stream_id, Ok(answer))?;
                        done += 1;
                    }
                }
                DATA => {
                    self.unacknowledged += payload.len() as u32;
                    if self.unacknowledged >= WINDOW_TOP_UP {
                        let increment = self.unacknowledged;
                        self.send(WINDOW_UPDATE, 0, 0, &increment.to_be_bytes())?;
                        self.unacknowledged = 0;
                    }
                    let data = unpad(kind, flags, &payload)?;
                    let answer = open
                        .get_mut(&stream_id)
                        .context("DATA on a stream without an answer head")?;
                    answer.body.extend_from_slice(data);
                    if flags & END_STREAM != 0 {
                        let answer = open.remove(&stream_id).context("answer without head")?;
                        ended(stream_id, Ok(answer))?;
                        done += 1;
                    }
                }
                RST_STREAM => {
                    open.remove(&stream_id);
                    let code = payload
                        .get(..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    ended(stream_id, Err(code))?;
                    done += 1;
                }
                // GOAWAY lets open streams finish; a connection closed before they did
                // is an error of `read_frame`.
                _ => {}
            }
        }
        Ok(())
    }

    fn send(&mut self, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(9 + payload.len());
        frame(&mut out, kind, flags, stream_id, payload);
        self.stream.write_all(&out).context("writing a frame")
    }

    fn read_frame(&mut self) -> anyhow::Result<(u8, u8, u32, Vec<u8>)> {
        loop {
            let pending = &self.buffer[self.start..];
            if let [l0, l1, l2, kind, flags, s0, s1, s2, s3, rest @ ..] = pending {
                let length = u32::from_be_bytes([0, *l0, *l1, *l2]) as usize;
                if let Some(payload) = rest.get(..length) {
                    let stream_id = u32::from_be_bytes([*s0, *s1, *s2, *s3]) & 0x7fff_ffff;
                    let parsed = (*kind, *flags, stream_id, payload.to_vec());
                    self.start += 9 + length;
                    return Ok(parsed);
                }
            }
            // Drop what was parsed (once per read, not once per frame).
            self.buffer.drain(..self.start);
            self.start = 0;
            let mut chunk = [0u8; 64 * 1024];
            let read = self.stream.read(&mut chunk).context("reading frames")?;
            anyhow::ensure!(read > 0, "the server closed the HTTP/2 connection");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Appends one frame.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream_id: u32, payload: &[u8]) {
    let length = payload.len() as u32;
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The payload of a HEADERS or DATA frame without its padding and priority fields.
fn unpad(kind: u8, flags: u8, payload: &[u8]) -> anyhow::Result<&[u8]> {
    let mut body = payload;
    let mut padding = 0;
    if flags & PADDED != 0 && kind != CONTINUATION {
        padding = *body.first().context("padded frame without a pad length")? as usize;
        body = &body[1..];
    }
    if kind == HEADERS && flags & PRIORITY != 0 {
        body = body.get(5..).context("short priority fields")?;
    }
    body.get(..body.len().saturating_sub(padding))
        .context("padding longer than the frame")
}

/// An HPACK integer with an `prefix`-bit prefix whose first byte starts with `high`.
fn integer(out: &mut Vec<u8>, high: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(high | value as u8);
        return;
    }
    out.push(high | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A "literal header field without indexing" with the static table's name `name_index`.
fn literal(out: &mut Vec<u8>, name_index: usize, value: &[u8]) {
    integer(out, 0x00, 4, name_index);
    integer(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// The `:status` at the start of a header block (after any dynamic table size updates).
fn status_of(block: &[u8]) -> u16 {
    let mut rest = block;
    // Dynamic table size updates (001xxxxx) may precede the first field.
    while let Some(&byte) = rest.first() {
        if byte & 0xe0 != 0x20 {
            break;
        }
        rest = &rest[1..];
        if byte & 0x1f == 0x1f {
            while let Some(&more) = rest.first() {
                rest = &rest[1..];
                if more & 0x80 == 0 {
                    break;
                }
            }
        }
    }
    match rest.first() {
        // Indexed fields 8 to 14 of the static table.
        Some(0x88) => 200,
        Some(0x89) => 204,
        Some(0x8a) => 206,
        Some(0x8b) => 304,
        Some(0x8c) => 400,
        Some(0x8d) => 404,
        Some(0x8e) => 500,
        // A literal with name index 8 (`:status`), with or without indexing, not Huffman.
        Some(0x48 | 0x08 | 0x18) => match rest.get(1..5) {
            Some([3, a, b, c]) => std::str::from_utf8(&[*a, *b, *c])
                .ok()
                .and_then(|code| code.parse().ok())
                .unwrap_or(0),
            _ => 0,
        },
        _ => 0,
    }
}
