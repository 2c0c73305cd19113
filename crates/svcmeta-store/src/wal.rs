//! The embedded store's write-ahead log: every committed batch is one checksummed frame,
//! written and `fdatasync`ed before the commit returns; the redb file catches up in the
//! background (`embedded.rs`) and records the last frame it holds, where replay starts.
//!
//! A frame is `len: u32 | crc32: u32 | seq: u64 | body`, little-endian; the checksum covers the
//! sequence number and the body. Sequence numbers count frames from 1 and never repeat.
//! Frames go into segment files of [`SEGMENT_BYTES`] in `wal/`, one segment at a time. A
//! segment whose frames are all in the redb file is reused: writing over blocks a file
//! already has needs no file-system metadata in the `fdatasync` (on ext4 that halves its
//! cost), and a spare segment is zero-filled ahead of need so that even a first pass over it
//! is an overwrite. A reused segment still holds older frames after the new ones; their
//! sequence numbers do not continue the chain, so reading stops there, as it does at a zeroed
//! header, a length past the end, or a checksum that does not match (a frame torn by a crash,
//! which was never acknowledged). A torn frame is the last one written, so an intact frame
//! with a higher number after the stopping point means the stopping frame was damaged, not
//! torn: opening the log then fails rather than silently dropping the acknowledged frames
//! after it. Frames missing between segments are an error too.
//! This module knows nothing of what a frame body holds.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::StoreError;

/// The log's directory inside the data directory.
pub(crate) const LOG_DIR: &str = "wal";
/// The size a segment is made with; a frame larger than what is left starts a new segment.
pub(crate) const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Length, checksum and sequence number.
const HEADER_BYTES: usize = 16;
/// The largest frame body accepted (a bulk request of 50,000 large registrations fits).
const MAX_BODY_BYTES: usize = 1 << 30;
/// Segments kept for reuse once the redb file holds their frames; more are deleted.
const SPARE_SEGMENTS: usize = 3;
/// Frames not yet in the redb file, in bytes, above which a write waits for the checkpoint.
const MAX_UNAPPLIED_BYTES: u64 = 128 * 1024 * 1024;

/// A frame read back when the log is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecoveredFrame {
    /// The frame's sequence number.
    pub(crate) seq: u64,
    /// The frame's body.
    pub(crate) body: Vec<u8>,
    /// The frame's size in the log, header included.
    pub(crate) bytes: u64,
}

/// Where a frame was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    /// The frame's sequence number.
    pub(crate) seq: u64,
    /// The frame's size in the log, header included.
    pub(crate) bytes: u64,
}

/// The segment frames are written to.
#[derive(Debug)]
struct ActiveSegment {
    path: PathBuf,
    file: File,
    offset: u64,
}

/// A segment that holds frames, some of which may not be in the redb file yet.
#[derive(Debug)]
struct SealedSegment {
    path: PathBuf,
    /// The newest sequence number in it (0: none).
    last_seq: u64,
}

#[derive(Debug)]
struct LogState {
    active: Option<ActiveSegment>,
    /// The newest sequence number in the active segment (0: none yet).
    active_last_seq: u64,
    sealed: Vec<SealedSegment>,
    /// Segments ready to be written from the start.
    spares: Vec<PathBuf>,
    /// Whether a segment was ever filled since the log was opened (only a busy log gets
    /// spares prepared ahead of need).
    switched: bool,
    next_seq: u64,
    next_number: u64,
    /// Bytes of frames written but not yet in the redb file.
    unapplied_bytes: u64,
    /// Set when a write or a checkpoint failed: the log takes no more frames.
    failure: Option<String>,
}

/// The write-ahead log of one data directory.
#[derive(Debug)]
pub(crate) struct WriteAheadLog {
    dir: PathBuf,
    state: Mutex<LogState>,
    /// Signalled when frames reach the redb file or the log fails.
    progress: Condvar,
}

fn io_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn checksum(seq: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// The segment number in a file name `segment-N.log`.
fn segment_number(name: &str) -> Option<u64> {
    name.strip_prefix("segment-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// The header fields (length, checksum, sequence number) at `offset`, if 16 bytes are there.
fn header_at(bytes: &[u8], offset: usize) -> Option<(usize, u32, u64)> {
    let header = bytes.get(offset..offset.checked_add(HEADER_BYTES)?)?;
    let len = u32::from_le_bytes(header.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(header.get(8..16)?.try_into().ok()?);
    Some((len, crc, seq))
}

/// The frame whose header starts at `offset`, if its length fits and its checksum matches.
fn frame_at(bytes: &[u8], offset: usize) -> Option<(u64, &[u8])> {
    let (len, crc, seq) = header_at(bytes, offset)?;
    if len == 0 || seq == 0 || len > MAX_BODY_BYTES {
        return None;
    }
    let start = offset + HEADER_BYTES;
    let body = bytes.get(start..start.checked_add(len)?)?;
    (checksum(seq, body) == crc).then_some((seq, body))
}

/// A frame with a sequence number above `last` anywhere in `bytes` from `from` on: frames
/// that follow a damaged one. A frame torn by a crash is the last one written, so nothing
/// valid can follow it; stale frames of a reused segment are all at or below `last`.
fn later_frame(bytes: &[u8], from: usize, last: u64) -> Option<(usize, u64)> {
    // No frame starts in the zeros at the end (the unwritten part of a segment): a header is
    // never all zeros. Find where they begin a word at a time.
    let written = bytes
        .chunks(8)
        .rposition(|word| word.iter().any(|b| *b != 0))
        .map_or(0, |word| (word + 1) * 8);
    let mut offset = from;
    while offset < written {
        // Cheap checks first: almost every offset fails on the length or the number.
        let (len, _, seq) = header_at(bytes, offset)?;
        let plausible = len > 0
            && len <= bytes.len() - offset - HEADER_BYTES
            && seq > last
            && seq - last < (1 << 40);
        if plausible {
            if let Some((seq, _)) = frame_at(bytes, offset) {
                return Some((offset, seq));
            }
        }
        offset += 1;
    }
    None
}

/// Whether a segment starts with an empty header: a zero-filled spare, or a segment whose
/// frames were all in the redb file when it was set aside for reuse.
fn starts_empty(bytes: &[u8]) -> bool {
    bytes
        .get(..HEADER_BYTES)
        .is_none_or(|header| header.iter().all(|b| *b == 0))
}

/// The frames at the start of a segment's bytes that form a chain of consecutive sequence
/// numbers with good checksums, and the offset where the chain ends.
fn read_chain(bytes: &[u8]) -> (Vec<RecoveredFrame>, usize) {
    let mut frames: Vec<RecoveredFrame> = Vec::new();
    let mut offset = 0usize;
    while let Some((seq, body)) = frame_at(bytes, offset) {
        if frames.last().is_some_and(|last| seq != last.seq + 1) {
            break;
        }
        frames.push(RecoveredFrame {
            seq,
            body: body.to_vec(),
            bytes: (HEADER_BYTES + body.len()) as u64,
        });
        offset += HEADER_BYTES + body.len();
    }
    (frames, offset)
}

/// Makes a directory entry durable (a new segment file).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

impl WriteAheadLog {
    /// Opens the log in `data_dir`, returning the frames after `applied` (the last frame the
    /// redb file holds), in order. Until [`WriteAheadLog::applied`] is told they are in the
    /// redb file, the segments holding them are not reused. With `required` (the redb file
    /// was not closed cleanly, so the log may hold acknowledged writes it lacks), a log with
    /// no segment at all is an error rather than an empty log. A frame that follows a damaged
    /// one is an error too: reading on would skip acknowledged writes, stopping there would
    /// lose the later ones silently.
    pub(crate) fn open(
        data_dir: &Path,
        applied: u64,
        required: bool,
    ) -> Result<(WriteAheadLog, Vec<RecoveredFrame>), StoreError> {
        let dir = data_dir.join(LOG_DIR);
        let existed = dir.is_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        // (path, frames, where the chain ends, whether frames may hide after it)
        let mut scanned: Vec<(PathBuf, Vec<RecoveredFrame>, usize, bool)> = Vec::new();
        let mut next_number = 0u64;
        for entry in std::fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
            let entry = entry.map_err(|e| io_error(&dir, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // A spare that was being zero-filled when the process stopped.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(number) = segment_number(&name) else {
                continue;
            };
            next_number = next_number.max(number + 1);
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
            let (frames, end) = read_chain(&bytes);
            scanned.push((path, frames, end, !starts_empty(&bytes)));
        }
        if required && scanned.is_empty() {
            return Err(StoreError::Log(format!(
                "{} {}; svcmeta.redb was not closed cleanly, so the log may hold acknowledged \
                 writes that it lacks: put back the wal directory that belongs with it (to open \
                 svcmeta.redb alone anyway, create an empty file {}/segment-00000000.log)",
                dir.display(),
                if existed {
                    "holds no segment"
                } else {
                    "is missing"
                },
                dir.display()
            )));
        }
        scanned.sort_by_key(|(_, frames, _, _)| frames.first().map_or(0, |f| f.seq));
        let mut expected = applied + 1;
        let mut recovered = Vec::new();
        let mut sealed = Vec::new();
        let mut to_check = Vec::new();
        for (path, frames, end, live) in scanned {
            let last_seq = frames.last().map_or(0, |f| f.seq);
            for frame in frames {
                if frame.seq <= applied {
                    continue;
                }
                if frame.seq != expected {
                    return Err(StoreError::Log(format!(
                        "{}: frame {} follows frame {}: frames are missing; restore the data \
                         directory from a backup",
                        path.display(),
                        frame.seq,
                        expected - 1
                    )));
                }
                expected += 1;
                recovered.push(frame);
            }
            if live {
                to_check.push((path.clone(), end));
            }
            sealed.push(SealedSegment { path, last_seq });
        }
        let last = expected - 1;
        for (path, end) in to_check {
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, e))?;
            if let Some((offset, seq)) = later_frame(&bytes, end.saturating_add(1), last) {
                return Err(StoreError::Log(format!(
                    "{}: the frame at byte {end} is damaged and frame {seq} (byte {offset}) \
                     follows it: frames up to {last} could be read, the acknowledged writes \
                     after them would be lost; restore the data directory from a backup",
                    path.display()
                )));
            }
        }
        let unapplied_bytes = recovered.iter().map(|f| f.bytes).sum();
        let log = WriteAheadLog {
            dir,
            state: Mutex::new(LogState {
                active: None,
                active_last_seq: 0,
                sealed,
                spares: Vec::new(),
                switched: false,
                next_seq: expected,
                next_number,
                unapplied_bytes,
                failure: None,
            }),
            progress: Condvar::new(),
        };
        Ok((log, recovered))
    }

    fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one frame and makes it durable; returns its sequence number. Waits while too
    /// much of the log is not yet in the redb file.
    pub(crate) fn append(&self, body: &[u8]) -> Result<Appended, StoreError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(StoreError::Log(format!(
                "a batch of {} bytes is over the log's limit of {MAX_BODY_BYTES} bytes",
                body.len()
            )));
        }
        let mut state = self.lock();
        while state.failure.is_none() && state.unapplied_bytes > MAX_UNAPPLIED_BYTES {
            state = self
                .progress
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        if let Some(failure) = &state.failure {
            return Err(StoreError::Log(failure.clone()));
        }
        let seq = state.next_seq;
        let frame_bytes = (HEADER_BYTES + body.len()) as u64;
        let fits = state
            .active
            .as_ref()
            .is_some_and(|a| a.offset == 0 || a.offset + frame_bytes <= SEGMENT_BYTES);
        if !fits {
            if let Err((error, full)) = self.start_segment(&mut state) {
                if !full {
                    state.failure = Some(format!("starting a segment failed: {error}"));
                }
                return Err(error);
            }
        }
        let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&checksum(seq, body).to_le_bytes());
        frame.extend_from_slice(&seq.to_le_bytes());
        frame.extend_from_slice(body);
        let Some(active) = state.active.as_mut() else {
            return Err(StoreError::Log("no segment to write to".to_string()));
        };
        if let Err(source) = active.file.write_all_at(&frame, active.offset) {
            let full = source.kind() == std::io::ErrorKind::StorageFull;
            let error = write_error(&active.path, source);
            if !full {
                state.failure = Some(format!("a write failed, restart to recover: {error}"));
            }
            // A write the disk had no room for left the frame partly written at most (a frame
            // cut short never reads as one): the next frame goes to the same place with the
            // same number.
            return Err(error);
        }
        if let Err(source) = active.file.sync_data() {
            let error = write_error(&active.path, source);
            // After a failed fsync the file's state is unknown (the whole frame may still
            // reach the disk later): take no more frames, and say that this one may or may
            // not survive a restart.
            state.failure = Some(format!("an fsync failed, restart to recover: {error}"));
            return Err(StoreError::SyncFailed(error.to_string()));
        }
        active.offset += frame_bytes;
        state.active_last_seq = seq;
        state.next_seq += 1;
        state.unapplied_bytes += frame_bytes;
        Ok(Appended {
            seq,
            bytes: frame_bytes,
        })
    }

    /// Seals the active segment and makes a spare (or a new file) the active one. An error
    /// says whether the disk was full (which a later write may get past).
    fn start_segment(&self, state: &mut LogState) -> Result<(), (StoreError, bool)> {
        let failed = |path: &Path, source: std::io::Error| {
            let full = source.kind() == std::io::ErrorKind::StorageFull;
            (write_error(path, source), full)
        };
        if let Some(active) = state.active.take() {
            state.sealed.push(SealedSegment {
                path: active.path,
                last_seq: state.active_last_seq,
            });
            state.switched = true;
        }
        state.active_last_seq = 0;
        let path = match state.spares.pop() {
            Some(path) => path,
            None => {
                let path = self.segment_path(state.next_number);
                state.next_number += 1;
                let created = File::create_new(&path)
                    .and_then(|file| file.set_len(SEGMENT_BYTES).and_then(|()| file.sync_all()))
                    .and_then(|()| sync_dir(&self.dir));
                if let Err(source) = created {
                    let _ = std::fs::remove_file(&path);
                    return Err(failed(&path, source));
                }
                path
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| failed(&path, source))?;
        state.active = Some(ActiveSegment {
            path,
            file,
            offset: 0,
        });
        Ok(())
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join(format!("segment-{number:08}.log"))
    }

    /// Records that the redb file holds every frame up to `seq`, `bytes` of them since the
    /// last call: segments holding only such frames become spares (or are deleted), and
    /// writes waiting for room go on.
    pub(crate) fn applied(&self, seq: u64, bytes: u64) {
        let mut state = self.lock();
        state.unapplied_bytes = state.unapplied_bytes.saturating_sub(bytes);
        let (done, kept): (Vec<SealedSegment>, Vec<SealedSegment>) =
            std::mem::take(&mut state.sealed)
                .into_iter()
                .partition(|segment| segment.last_seq <= seq);
        state.sealed = kept;
        for segment in done {
            let size = std::fs::metadata(&segment.path).map_or(u64::MAX, |m| m.len());
            if state.spares.len() < SPARE_SEGMENTS && size <= SEGMENT_BYTES {
                // Break the old chain at its start, so that reading a spare stops at once (a
                // crash before this reaches the disk only costs a longer scan).
                let erased = OpenOptions::new()
                    .write(true)
                    .open(&segment.path)
                    .and_then(|f| f.write_all_at(&[0u8; HEADER_BYTES], 0));
                if erased.is_ok() {
                    state.spares.push(segment.path);
                    continue;
                }
            }
            let _ = std::fs::remove_file(&segment.path);
        }
        drop(state);
        self.progress.notify_all();
    }

    /// Marks the log failed: later writes get `reason`.
    pub(crate) fn fail(&self, reason: String) {
        let mut state = self.lock();
        if state.failure.is_none() {
            state.failure = Some(reason);
        }
        drop(state);
        self.progress.notify_all();
    }

    /// The reason the log takes no more frames, if it failed.
    pub(crate) fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }

    /// Zero-fills a spare segment when a busy log has none, so the next segment switch
    /// writes over existing blocks. Runs on the checkpoint thread, off the write path.
    pub(crate) fn prepare_spare(&self) {
        let number = {
            let mut state = self.lock();
            if !state.switched || !state.spares.is_empty() || state.failure.is_some() {
                return;
            }
            state.next_number += 1;
            state.next_number - 1
        };
        let path = self.segment_path(number);
        let staging = path.with_extension("log.tmp");
        let made = (|| -> std::io::Result<()> {
            let mut file = File::create_new(&staging)?;
            let zeros = vec![0u8; 1024 * 1024];
            let mut left = SEGMENT_BYTES;
            while left > 0 {
                let step = left.min(zeros.len() as u64) as usize;
                file.write_all(zeros.get(..step).unwrap_or(&zeros))?;
                left -= step as u64;
            }
            file.sync_all()?;
            std::fs::rename(&staging, &path)
        })();
        match made
            .and_then(|()| sync_dir(&self.dir))
            .map_err(|e| io_error(&staging, e))
        {
            Ok(()) => self.lock().spares.push(path),
            Err(error) => {
                tracing::warn!(%error, "could not prepare a spare log segment");
                let _ = std::fs::remove_file(&staging);
            }
        }
    }
}

#[cfg(test)]
mod tests;
