//! Tests of the write-ahead log: frames come back in order after a reopen, a torn or stale
//! tail is not read, reused segments do not bring old frames back, missing frames are an
//! error, and a failed log takes no more frames.

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use super::*;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("svcmeta-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn body(n: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (n as usize * 31 + i) as u8).collect()
}

fn seqs(frames: &[RecoveredFrame]) -> Vec<u64> {
    frames.iter().map(|f| f.seq).collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir.join(LOG_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    found.sort();
    found
}

#[test]
fn frames_come_back_in_order_after_a_reopen() {
    let dir = TempDir::new("order");
    {
        let (log, recovered) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
        assert!(recovered.is_empty());
        for n in 1..=5 {
            let appended = log.append(&body(n, 100 + n as usize)).unwrap();
            assert_eq!(appended.seq, n);
            assert_eq!(appended.bytes, 16 + 100 + n);
        }
    }
    let (_, recovered) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
    assert_eq!(seqs(&recovered), vec![1, 2, 3, 4, 5]);
    for frame in &recovered {
        assert_eq!(frame.body, body(frame.seq, 100 + frame.seq as usize));
    }
    // Frames the redb file already holds are not handed back, and numbering goes on after
    // them, never reusing a sequence number.
    let (log, recovered) = WriteAheadLog::open(&dir.0, 3, false).unwrap();
    assert_eq!(seqs(&recovered), vec![4, 5]);
    assert_eq!(log.append(b"next").unwrap().seq, 6);
}

#[test]
fn a_torn_frame_at_the_end_is_not_read() {
    let dir = TempDir::new("torn");
    {
        let (log, _) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
        log.append(&body(1, 50)).unwrap();
        log.append(&body(2, 50)).unwrap();
    }
    let segment = segments(&dir.0).remove(0);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    // A third frame whose write was cut short: a header promising 50 bytes, half of them.
    let mut torn = Vec::new();
    torn.extend_from_slice(&50u32.to_le_bytes());
    torn.extend_from_slice(&checksum(3, &body(3, 50)).to_le_bytes());
    torn.extend_from_slice(&3u64.to_le_bytes());
    torn.extend_from_slice(&body(3, 25));
    file.write_all_at(&torn, 2 * 66).unwrap();
    let (log, recovered) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
    assert_eq!(seqs(&recovered), vec![1, 2]);
    // The torn frame's number is taken again by the next write, which replaces it.
    assert_eq!(log.append(&body(3, 50)).unwrap().seq, 3);
    drop(log);
    let (_, recovered) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
    assert_eq!(seqs(&recovered), vec![1, 2, 3]);
}

fn flip_byte(path: &Path, at: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
}

/// Writes frames 1 to 3 (56 bytes each) and returns the segment holding them.
fn three_frames(dir: &Path) -> PathBuf {
    {
        let (log, _) = WriteAheadLog::open(dir, 0, false).unwrap();
        for n in 1..=3 {
            log.append(&body(n, 40)).unwrap();
        }
    }
    segments(dir).remove(0)
}

#[test]
fn a_damaged_frame_with_frames_after_it_is_an_error_not_a_silent_loss() {
    let dir = TempDir::new("flipped");
    let segment = three_frames(&dir.0);
    // One bit inside the second frame's body: frame 3 is intact after it.
    flip_byte(&segment, 56 + 16 + 7);
    let error = WriteAheadLog::open(&dir.0, 0, false).unwrap_err();
    assert!(matches!(error, StoreError::Log(_)), "{error:?}");
    let text = error.to_string();
    assert!(text.contains("frame 3"), "{text}");
    assert!(text.contains("frames up to 1"), "{text}");
    // The same damage once the redb file holds frames 1 to 3 no longer matters.
    let (_, recovered) = WriteAheadLog::open(&dir.0, 3, false).unwrap();
    assert!(recovered.is_empty());
}

#[test]
fn damage_in_the_last_frame_reads_as_a_torn_write() {
    let dir = TempDir::new("flipped-last");
    let segment = three_frames(&dir.0);
    // Nothing follows frame 3, so it cannot be told from a write the crash cut short.
    flip_byte(&segment, 2 * 56 + 16 + 7);
    let (_, recovered) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
    assert_eq!(seqs(&recovered), vec![1, 2]);
}

#[test]
fn a_missing_log_is_an_error_when_the_redb_file_needs_it() {
    let dir = TempDir::new("missing");
    {
        let (log, _) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
        log.append(b"one").unwrap();
    }
    std::fs::remove_dir_all(dir.0.join(LOG_DIR)).unwrap();
    let error = WriteAheadLog::open(&dir.0, 0, true).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("is missing"), "{text}");
    assert!(text.contains("not closed cleanly"), "{text}");
    // A cleanly closed redb file needs no log.
    WriteAheadLog::open(&dir.0, 0, false).unwrap();
    // A log directory without segments is refused too; an empty segment file is the way to
    // open the redb file alone on purpose.
    let error = WriteAheadLog::open(&dir.0, 0, true).unwrap_err();
    assert!(error.to_string().contains("holds no segment"), "{error}");
    std::fs::write(dir.0.join(LOG_DIR).join("segment-00000000.log"), b"").unwrap();
    let (log, recovered) = WriteAheadLog::open(&dir.0, 5, true).unwrap();
    assert!(recovered.is_empty());
    assert_eq!(log.append(b"next").unwrap().seq, 6);
}

#[test]
fn reused_segments_never_bring_old_frames_back() {
    let dir = TempDir::new("reuse");
    // Frames of a third of a segment: three fill one, the fourth starts the next.
    let size = (SEGMENT_BYTES / 3) as usize - 64;
    {
        let (log, _) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
        for n in 1..=4 {
            log.append(&body(n, size)).unwrap();
        }
        assert_eq!(segments(&dir.0).len(), 2);
        // The redb file caught up with frame 3: the first segment becomes a spare.
        log.applied(3, 0);
        for n in 5..=6 {
            log.append(&body(n, size)).unwrap();
        }
        // Frame 7 does not fit in the second segment and goes into the reused first one.
        log.append(&body(7, size / 2)).unwrap();
        assert_eq!(segments(&dir.0).len(), 2, "the spare was reused");
    }
    // The reused segment starts with frame 7 and still holds most of frames 1 to 3 after it.
    let (_, recovered) = WriteAheadLog::open(&dir.0, 3, false).unwrap();
    assert_eq!(seqs(&recovered), vec![4, 5, 6, 7]);
    assert_eq!(recovered[3].body, body(7, size / 2));
    // Frames 1 to 3 are gone from the log (only a redb file holding them may open it), and
    // none of their stale bytes is taken for a frame.
    let error = WriteAheadLog::open(&dir.0, 0, false).unwrap_err();
    assert!(
        error.to_string().contains("frame 4 follows frame 0"),
        "{error}"
    );
}

#[test]
fn missing_frames_are_an_error_not_a_silent_gap() {
    let dir = TempDir::new("gap");
    let size = (SEGMENT_BYTES / 2) as usize;
    {
        let (log, _) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
        for n in 1..=3 {
            log.append(&body(n, size)).unwrap();
        }
    }
    let files = segments(&dir.0);
    assert_eq!(files.len(), 3, "one frame per segment");
    std::fs::remove_file(&files[1]).unwrap();
    let error = WriteAheadLog::open(&dir.0, 0, false).unwrap_err();
    assert!(
        matches!(error, StoreError::Log(_)),
        "{error:?} should say frames are missing"
    );
    assert!(error.to_string().contains("frames are missing"), "{error}");
    // Once the redb file holds frames 1 and 2, the missing segment no longer matters.
    let (_, recovered) = WriteAheadLog::open(&dir.0, 2, false).unwrap();
    assert_eq!(seqs(&recovered), vec![3]);
}

#[test]
fn a_failed_log_takes_no_more_frames() {
    let dir = TempDir::new("failed");
    let (log, _) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
    log.append(b"one").unwrap();
    log.fail("the disk went away".to_string());
    let error = log.append(b"two").unwrap_err();
    assert!(error.to_string().contains("the disk went away"), "{error}");
    assert_eq!(log.failure().as_deref(), Some("the disk went away"));
}

#[test]
fn a_spare_is_prepared_for_a_busy_log_and_reused() {
    let dir = TempDir::new("spare");
    let (log, _) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
    // A quiet log gets no spare: a small registry keeps one segment.
    log.append(b"small").unwrap();
    log.prepare_spare();
    assert_eq!(segments(&dir.0).len(), 1);
    let size = (SEGMENT_BYTES / 2) as usize;
    log.append(&body(2, size)).unwrap();
    log.append(&body(3, size)).unwrap();
    assert_eq!(segments(&dir.0).len(), 2);
    log.prepare_spare();
    let files = segments(&dir.0);
    assert_eq!(files.len(), 3, "a zero-filled spare was made");
    let spare = files.last().unwrap();
    let bytes = std::fs::read(spare).unwrap();
    assert_eq!(bytes.len() as u64, SEGMENT_BYTES);
    assert!(bytes.iter().all(|b| *b == 0));
    log.append(&body(4, size)).unwrap();
    assert_eq!(
        segments(&dir.0).len(),
        3,
        "the spare became the active segment"
    );
    drop(log);
    let (_, recovered) = WriteAheadLog::open(&dir.0, 0, false).unwrap();
    assert_eq!(seqs(&recovered), vec![1, 2, 3, 4]);
}
