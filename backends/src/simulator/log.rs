//! What a simulated container's process wrote, and the lifecycle events its readers follow.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::program::{frames, STDERR, STDOUT};

/// The live side of one container: its log ring, its lifecycle events and its pause state.
pub(super) struct Live {
    log: Mutex<Ring>,
    /// Changes with every log append, start, exit and removal.
    pub events: watch::Sender<Life>,
    pub paused: watch::Sender<bool>,
    /// The sequence number each attached reader reads next, by reader number.
    readers: Mutex<Readers>,
    /// Bumped whenever an attached reader moves on or leaves.
    progress: watch::Sender<u64>,
}

#[derive(Default)]
struct Readers {
    next: u64,
    at: HashMap<u64, u64>,
}

/// A container's lifecycle as its followers see it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Life {
    /// Sequence number after the newest log entry.
    pub written: u64,
    /// Starts so far (a start that failed counts, and also counts as an exit).
    pub runs: u64,
    /// Exits so far; equal to `runs` unless the container runs.
    pub exits: u64,
    pub running: bool,
    /// The last exit code.
    pub code: i32,
    pub removed: bool,
}

/// One log entry: a line (with its newline) or the piece of one a single write ended with.
#[derive(Clone)]
pub(super) struct Entry {
    pub stream: u8,
    pub time: OffsetDateTime,
    pub data: Bytes,
    /// Bytes appended to the log before this entry.
    offset: u64,
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    first: u64,
    bytes: usize,
    /// Bytes ever appended.
    total: u64,
}

impl Ring {
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// How far a reader at sequence number `at` is behind: entries and bytes.
    fn lag(&self, at: u64) -> (u64, u64) {
        let index = at.saturating_sub(self.first);
        let offset = usize::try_from(index)
            .ok()
            .and_then(|index| self.entries.get(index))
            .map_or(self.total, |entry| entry.offset);
        (self.end().saturating_sub(at), self.total - offset.min(self.total))
    }
}

impl Live {
    pub(super) fn new() -> Self {
        Self {
            log: Mutex::new(Ring::default()),
            events: watch::Sender::new(Life::default()),
            paused: watch::Sender::new(false),
            readers: Mutex::new(Readers::default()),
            progress: watch::Sender::new(0),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // Plain data; a panic while holding the lock leaves it consistent enough to go on.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends what the process wrote on `stream`, a line per entry; drops the oldest
    /// entries beyond [`MAX_LOG_ENTRIES`] or [`MAX_LOG_BYTES`].
    pub(super) fn append(&self, stream: u8, data: &[u8]) {
        let time = OffsetDateTime::now_utc();
        let written = {
            let mut ring = self.ring();
            for line in data.split_inclusive(|&b| b == b'\n') {
                for piece in line.chunks(MAX_ENTRY) {
                    let offset = ring.total;
                    ring.bytes += piece.len();
                    ring.total += piece.len() as u64;
                    let data = Bytes::copy_from_slice(piece);
                    ring.entries.push_back(Entry { stream, time, data, offset });
                }
            }
            while ring.entries.len() > MAX_LOG_ENTRIES || ring.bytes > MAX_LOG_BYTES {
                let Some(old) = ring.entries.pop_front() else { break };
                ring.bytes -= old.data.len();
                ring.first += 1;
            }
            ring.end()
        };
        self.events.send_modify(|life| life.written = written);
    }

    /// Waits until every attached reader is within [`MAX_LAG_ENTRIES`] and [`MAX_LAG_BYTES`]
    /// of the end of the log: a process writes no faster than its attached clients read (as
    /// with dockerd), and those never lose output to the ring's bounds.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(super) async fn caught_up(&self) {
        let mut progress = self.progress.subscribe();
        loop {
            progress.borrow_and_update();
            let slowest = self.lock_readers().at.values().copied().min();
            let Some(slowest) = slowest else { return };
            let (entries, bytes) = self.ring().lag(slowest);
            if entries <= MAX_LAG_ENTRIES && bytes <= MAX_LAG_BYTES as u64 {
                return;
            }
            // Never fails: `self` holds the sender.
            let _ = progress.changed().await;
        }
    }

    fn lock_readers(&self) -> MutexGuard<'_, Readers> {
        self.readers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an attached reader at `cursor`; it leaves when the guard is dropped.
    fn attach_reader(&self, cursor: u64) -> ReaderGuard<'_> {
        let mut readers = self.lock_readers();
        let number = readers.next;
        readers.next += 1;
        readers.at.insert(number, cursor);
        ReaderGuard { live: self, number }
    }

    fn reader_at(&self, number: u64, cursor: u64) {
        self.lock_readers().at.insert(number, cursor);
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Up to `max` entries from sequence number `from` on (or the oldest kept, if those were
    /// dropped), and the sequence number after them.
    fn read(&self, from: u64, max: usize) -> (Vec<Entry>, u64) {
        let ring = self.ring();
        let start = from.max(ring.first);
        let skip = usize::try_from(start - ring.first).unwrap_or(usize::MAX);
        let entries: Vec<Entry> = ring.entries.iter().skip(skip).take(max).cloned().collect();
        let next = start + entries.len() as u64;
        (entries, next)
    }

    /// Every kept entry, and the sequence number after the last.
    pub(super) fn snapshot(&self) -> (Vec<Entry>, u64) {
        let ring = self.ring();
        (ring.entries.iter().cloned().collect(), ring.end())
    }

    /// Writes the entries from `cursor` on to `out` as they come, until the container has
    /// exited `exits` times (or was removed) and everything before that was written, or the
    /// reader goes away. An `attached` reader holds the process back (see
    /// [`Live::caught_up`]); a `docker logs -f` reader does not.
    ///
    /// # Cancel safety
    /// Dropping the future stops the copy; what was written stays written.
    pub(super) async fn follow<W: AsyncWrite + Unpin>(
        &self,
        mut cursor: u64,
        exits: u64,
        attached: bool,
        view: &View,
        out: &mut W,
    ) {
        let guard = attached.then(|| self.attach_reader(cursor));
        let mut events = self.events.subscribe();
        loop {
            // Look at the events before the ring, so an append after the read wakes us.
            let life = *events.borrow_and_update();
            let (entries, next) = self.read(cursor, FOLLOW_BATCH);
            cursor = next;
            if !entries.is_empty() {
                if out.write_all(&view.render(&entries)).await.is_err() {
                    return;
                }
                if let Some(guard) = &guard {
                    self.reader_at(guard.number, cursor);
                }
                continue;
            }
            if life.exits >= exits || life.removed || events.changed().await.is_err() {
                return;
            }
        }
    }
}

/// An attached reader's place in [`Live::readers`]; dropping it lets the process go on.
struct ReaderGuard<'a> {
    live: &'a Live,
    number: u64,
}

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        self.live.lock_readers().at.remove(&self.number);
        self.live.progress.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Which entries a reader wants and how it shows them.
pub(super) struct View {
    pub stdout: bool,
    pub stderr: bool,
    /// Raw bytes (a TTY container) rather than multiplexed frames.
    pub raw: bool,
    /// Each entry prefixed with its time, as `docker logs -t` shows it.
    pub timestamps: bool,
    /// Unix seconds: entries older than `since` or newer than `until` are left out.
    pub since: Option<f64>,
    pub until: Option<f64>,
}

impl View {
    /// The options of `docker logs` (`stdout=1`, `stderr=1`, `timestamps=1`, `since=`,
    /// `until=`); `raw` for a TTY container.
    pub(super) fn from_options(options: &[(String, String)], raw: bool) -> Self {
        let get = |key: &str| options.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let flag = |key: &str| get(key).is_some_and(|v| matches!(v, "1" | "true" | "True"));
        let time = |key: &str| get(key).and_then(|v| v.parse::<f64>().ok()).filter(|t| *t > 0.0);
        Self {
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            raw,
            timestamps: flag("timestamps"),
            since: time("since"),
            until: time("until"),
        }
    }

    /// Whether `entry` is shown.
    pub(super) fn wants(&self, entry: &Entry) -> bool {
        let stream = match entry.stream {
            STDOUT => self.stdout,
            STDERR => self.stderr,
            _ => false,
        };
        let at = entry.time.unix_timestamp_nanos() as f64 / 1e9;
        stream && self.since.is_none_or(|since| at >= since) && self.until.is_none_or(|u| at <= u)
    }

    /// The bytes on the wire for `entries`.
    pub(super) fn render(&self, entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for entry in entries.iter().filter(|entry| self.wants(entry)) {
            let mut payload = Vec::with_capacity(entry.data.len() + 32);
            if self.timestamps {
                payload.extend_from_slice(timestamp(entry.time).as_bytes());
                payload.push(b' ');
            }
            payload.extend_from_slice(&entry.data);
            if self.raw {
                out.extend_from_slice(&payload);
            } else {
                out.extend_from_slice(&frames(entry.stream, &payload));
            }
        }
        out
    }
}

/// A time as `docker logs -t` writes it: RFC 3339 in UTC with nine fraction digits.
pub(super) fn timestamp(time: OffsetDateTime) -> String {
    let time = time.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.nanosecond()
    )
}

/// Most entries one container's log keeps; the oldest go first.
pub(super) const MAX_LOG_ENTRIES: usize = 10_000;
/// Most payload bytes one container's log keeps. Worst case per container: this plus
/// `MAX_LOG_ENTRIES` entry headers (about 64 bytes each), about 1.6 MiB.
pub(super) const MAX_LOG_BYTES: usize = 1 << 20;
/// Largest entry; a longer line is split, as Docker's log driver splits at 16 KiB.
const MAX_ENTRY: usize = 16 * 1024;
/// How far, in entries, an attached reader may fall behind before the process waits for it;
/// well within `MAX_LOG_ENTRIES`, so it loses nothing to the ring.
const MAX_LAG_ENTRIES: u64 = 2048;
/// How far, in bytes, an attached reader may fall behind; well within `MAX_LOG_BYTES`.
const MAX_LAG_BYTES: usize = 256 * 1024;
/// Entries a follower copies per lock of the ring.
const FOLLOW_BATCH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_lines_and_drops_the_oldest_beyond_its_bounds() {
        let live = Live::new();
        live.append(STDOUT, b"one\ntwo\npart");
        live.append(STDERR, b"err\n");
        let (entries, end) = live.snapshot();
        let texts: Vec<&[u8]> = entries.iter().map(|e| &e.data[..]).collect();
        assert_eq!(texts, [&b"one\n"[..], b"two\n", b"part", b"err\n"]);
        assert_eq!((end, live.events.borrow().written), (4, 4));

        for _ in 0..MAX_LOG_ENTRIES {
            live.append(STDOUT, b"x\n");
        }
        let (entries, end) = live.snapshot();
        assert_eq!(entries.len(), MAX_LOG_ENTRIES);
        assert_eq!(end, 4 + MAX_LOG_ENTRIES as u64);
        // A reader whose cursor fell out of the ring resumes at the oldest entry kept.
        let (read, next) = live.read(0, 2);
        assert_eq!((read.len(), next), (2, 6));

        let big = vec![b'y'; MAX_LOG_BYTES];
        live.append(STDOUT, &big);
        let (entries, _) = live.snapshot();
        assert_eq!(entries.iter().map(|e| e.data.len()).sum::<usize>(), MAX_LOG_BYTES);
        assert_eq!(entries.len(), MAX_LOG_BYTES / MAX_ENTRY);
    }

    #[tokio::test]
    async fn an_attached_reader_holds_the_writer_back_and_loses_nothing() {
        let live = std::sync::Arc::new(Live::new());
        let view = View {
            stdout: true,
            stderr: true,
            raw: true,
            timestamps: false,
            since: None,
            until: None,
        };
        let (mut writer, mut reader) = tokio::io::duplex(4096);
        let follower = {
            let live = live.clone();
            tokio::spawn(async move { live.follow(0, 1, true, &view, &mut writer).await })
        };
        // Wait for the reader to register, so the writer is held back from its first line.
        for _ in 0..100_000 {
            if !live.lock_readers().at.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(live.lock_readers().at.len(), 1, "the reader registered");
        // Four times the ring's byte bound: without the wait the reader would lose most.
        let line = [b'z'; 1023].iter().copied().chain([b'\n']).collect::<Vec<u8>>();
        let lines = 4 * MAX_LOG_BYTES / line.len();
        let writing = {
            let live = live.clone();
            tokio::spawn(async move {
                for _ in 0..lines {
                    live.append(STDOUT, &line);
                    live.caught_up().await;
                }
                live.events.send_modify(|life| life.exits = 1);
            })
        };
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut got).await.unwrap();
        writing.await.unwrap();
        follower.await.unwrap();
        assert_eq!(got.len(), lines * 1024);
        assert!(got.chunks(1024).all(|chunk| chunk[1023] == b'\n' && chunk[0] == b'z'));
        assert!(live.lock_readers().at.is_empty(), "the reader left when it ended");
    }

    #[test]
    fn views_filter_streams_and_times_and_frame_or_not() {
        let live = Live::new();
        live.append(STDOUT, b"out\n");
        live.append(STDERR, b"err\n");
        let (entries, _) = live.snapshot();
        let view = |options: &[(&str, &str)], raw| {
            let options: Vec<(String, String)> =
                options.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            View::from_options(&options, raw).render(&entries)
        };
        assert_eq!(view(&[("stdout", "1")], false), b"\x01\x00\x00\x00\x00\x00\x00\x04out\n");
        assert_eq!(view(&[("stdout", "1"), ("stderr", "1")], true), b"out\nerr\n");
        assert_eq!(view(&[("stdout", "1"), ("until", "1000")], true), b"");
        let stamped = String::from_utf8(view(&[("stderr", "1"), ("timestamps", "1")], true));
        let stamped = stamped.unwrap();
        assert_eq!(stamped.len(), "2026-01-01T00:00:00.000000000Z err\n".len(), "{stamped}");
        assert!(stamped.ends_with("Z err\n") && stamped.as_bytes()[10] == b'T', "{stamped}");
        let time = OffsetDateTime::from_unix_timestamp_nanos(1_764_547_200_000_000_042).unwrap();
        assert_eq!(timestamp(time), "2025-12-01T00:00:00.000000042Z");
    }
}
