// Added for libchan (PATCHES.md): data frame bodies kept for reuse.

//! Buffers for data frame bodies, kept for reuse.
//!
//! A bulk stream sends and receives its data as frames of up to `split_send_size` bytes, each
//! body a `Vec<u8>` allocated on one task (the writer, or the connection reading) and freed on
//! another (the connection once the body is written, or the reader once it has copied it out).
//! With glibc a steady flow of such blocks, freed on other threads than the ones that allocate
//! them, keeps shrinking and regrowing the heap: measured at 100,000 to 290,000 page faults per
//! GiB once stream windows may grow past 256 KiB. Bodies of the pooled size are returned here
//! instead and handed out again, so a bulk transfer reuses the same few blocks.
//!
//! The pool is one per process and keeps at most [`KEEP`] bodies, so what it holds is bounded
//! whatever the number of connections. Small bodies (messages, control frames) are not pooled:
//! they are cheap to allocate, and a small frame must not hold a large block while it waits in
//! a stream's buffer.

use parking_lot::Mutex;

/// The size of a pooled body's block: libchan's `split_send_size`, the largest data frame it
/// sends, which is what a bulk transfer's frames are.
pub(crate) const BLOCK: usize = 64 * 1024;

/// Bodies shorter than this get a block of their own, not a pooled one: a pooled block holds
/// at most 8/7 of the bytes it carries, so what a peer can make a connection buffer (its
/// receive window) grows by no more than that.
const MIN_POOLED: usize = BLOCK - BLOCK / 8;

/// Most bodies kept at once (4 MiB).
const KEEP: usize = 64;

/// The process's pool.
pub(crate) static POOL: Pool = Pool::new();

pub(crate) struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
}

fn pooled(len: usize) -> bool {
    (MIN_POOLED..=BLOCK).contains(&len)
}

impl Pool {
    const fn new() -> Self {
        Pool { free: Mutex::new(Vec::new()) }
    }

    fn block(&self) -> Vec<u8> {
        self.free.lock().pop().unwrap_or_else(|| Vec::with_capacity(BLOCK))
    }

    /// A body of `len` bytes to read into. Its content is unspecified (a reused block keeps
    /// what it held): the caller overwrites all of it before anyone sees it.
    pub(crate) fn take(&self, len: usize) -> Vec<u8> {
        if !pooled(len) {
            return vec![0; len];
        }
        let mut body = self.block();
        // A reused block shrinks without a write; only a fresh block's bytes are zeroed.
        body.resize(len, 0);
        body
    }

    /// A body holding a copy of `data`.
    pub(crate) fn copy(&self, data: &[u8]) -> Vec<u8> {
        if !pooled(data.len()) {
            return data.to_vec();
        }
        let mut body = self.block();
        body.clear();
        body.extend_from_slice(data);
        body
    }

    /// Returns a body that is no longer needed; a pooled block is kept if there is room.
    pub(crate) fn give(&self, body: Vec<u8>) {
        if body.capacity() != BLOCK {
            return;
        }
        let mut free = self.free.lock();
        if free.len() < KEEP {
            free.push(body);
        }
    }
}
