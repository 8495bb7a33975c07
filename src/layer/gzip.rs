//! gzip layers: one pass that inflates and records checkpoints, then positional reads that
//! resume from the nearest checkpoint.
//!
//! gzip cannot be entered mid-stream: every byte depends on the bits before it and on up to
//! 32 KiB of earlier output. So the pull's single pass over a layer ([`inflate_indexed`]) stops
//! the inflater at deflate block boundaries and, about every [`DEFAULT_SPAN`] bytes of output,
//! records a [`Checkpoint`]: where in the compressed blob the next block starts (to the bit) and
//! the 32 KiB of output before it (the method of zlib's `zran.c`, see DESIGN.md). Later a
//! [`GzipReader`] serves a read by inflating from the nearest checkpoint at or before it to the
//! next checkpoint, and keeps that whole decompressed span in a [`SpanCache`], so a file read
//! front to back inflates each span once.
//!
//! Layers may be several gzip members one after the other (pigz, estargz); each member's CRC-32
//! and size are checked in the indexing pass. A checkpoint always lies inside a member, before a
//! block that is not the member's last, and its window never reaches back into an earlier member
//! (so a checkpoint at the very start of a member has an empty window). A read that runs past
//! the end of a member skips its trailer and carries on into the next member.
//!
//! A span read from the middle of a member has no CRC to check, so after inflating a span the
//! reader checks that the deflate stream reaches the next checkpoint exactly at the span's end
//! (or ends there, for the last span): damage to the blob after it was verified then shows as
//! an `InvalidData` error rather than as wrong bytes, with high probability.
//!
//! Memory: the cache holds at most its byte budget of spans. Spans too large to cache come from
//! deflate streams written in huge blocks (checkpoints can only go between blocks, and zlib-ng's
//! and zlib-rs' fastest level writes one block per flush, possibly the whole layer): such a
//! layer is read through a `LocalCopy` if the caller gives it a path
//! ([`GzipReader::with_local_copy`]), or else inflated from its checkpoint on every read, which
//! is slow but bounded. The span cache and local copies serve zstd layers too.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::sys::zlib::{self, Flush, Format, Inflater, Status};

/// Uncompressed bytes between checkpoints. A read inflates on average half a span more than it
/// needs, and each checkpoint costs a 32 KiB window in the index (about 3% of the layer), so
/// ~1 MiB balances read latency against index size (DESIGN.md).
pub const DEFAULT_SPAN: u64 = 1 << 20;
/// Default memory for decompressed spans, shared by all layers of a mount: room for several
/// ~1 MiB spans, so a few files can be read at once without evicting each other's spans, while
/// a mount of 100,000 files stays under 50 MiB (measured: a full read of a Debian image, or of
/// a layer of 100,000 small files, runs as fast with 8 MiB as with 32 MiB).
pub const DEFAULT_CACHE_BYTES: u64 = 8 << 20;

/// deflate's largest back-reference distance: the window a checkpoint must carry.
const WINDOW: usize = 32 << 10;
/// Output handed to the sink per write in the indexing pass: large, so the per-call costs of
/// the sink (hashing, tar parsing, file writes) are amortised.
const OUT_CHUNK: usize = 1 << 20;
/// Compressed bytes read per `pread` when resuming at a checkpoint; a 1 MiB span of typical
/// layer data is a few hundred KiB compressed.
const READ_CHUNK: usize = 128 << 10;
/// Scratch buffer for output that is inflated only to be skipped.
const SKIP_CHUNK: usize = 256 << 10;
/// Buffers for reading a blob and writing a local copy when decompressing a whole layer.
const COPY_BUFFER: usize = 1 << 20;
/// zlib reports "no progress" when it decodes an empty block from bits it already holds; that
/// can happen only a few times in a row (at most 63 bits are held), so more means a stall.
const MAX_STALLS: u32 = 64;
/// A span larger than this share of the cache budget is not cached, so the cache always has
/// room for several spans and readers of different files do not evict each other every read.
const CACHED_SHARE: u64 = 4;
/// Spans decompressed ahead of a sequential reader.
const READ_AHEAD: u64 = 2;
/// Most prefetch threads per cache, and most prefetches waiting for one.
const PREFETCH_THREADS: usize = 3;
const PREFETCH_QUEUE: usize = 8;
/// Bytes of a gzip member's trailer: CRC-32 and size, four bytes each.
const TRAILER: u64 = 8;
/// The first byte of a gzip member's magic number.
const GZIP_MAGIC0: u8 = 0x1f;

/// A place where inflating can resume (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the uncompressed stream.
    pub out: u64,
    /// Byte offset in the compressed blob where inflating resumes.
    pub input: u64,
    /// How many bits (0-7) of the byte before `input` are still to be consumed: its high bits.
    pub bits: u8,
    /// Up to 32 KiB of uncompressed output just before `out`.
    pub window: Window,
}

/// A checkpoint's window: raw as inflating produced it, or deflated as the index file keeps it,
/// and then inflated only when a read resumes there. A mounted 1 GiB layer has about a thousand
/// windows; inflating all of them when the index is opened cost a quarter of a second and
/// 32 MiB of memory for windows that most mounts never use. A mounted layer's windows stay in
/// its index file and are read from there when a read resumes at one, so memory does not grow
/// with the size of the layers.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Length of the raw window.
    len: usize,
    deflated: bool,
    bytes: Kept,
}

/// Where a window's bytes are: its own allocation, or `len` bytes at `offset` of the index
/// file (verified when the index was opened; index files are replaced, never rewritten).
#[derive(Clone, Debug)]
enum Kept {
    Own(Box<[u8]>),
    InFile {
        file: Arc<File>,
        offset: u64,
        len: usize,
    },
}

impl Default for Kept {
    fn default() -> Kept {
        Kept::Own(Box::default())
    }
}

impl Kept {
    fn get(&self) -> io::Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Kept::Own(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Kept::InFile { file, offset, len } => {
                let mut buf = vec![0u8; *len];
                file.read_exact_at(&mut buf, *offset).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("reading a gzip checkpoint's window from the layer index: {e}"),
                    )
                })?;
                Ok(std::borrow::Cow::Owned(buf))
            }
        }
    }
}

impl Window {
    /// A window of raw bytes.
    pub fn raw(bytes: Vec<u8>) -> Window {
        Window {
            len: bytes.len(),
            deflated: false,
            bytes: Kept::Own(bytes.into_boxed_slice()),
        }
    }

    /// A window of `len` raw bytes kept as the raw deflate stream `bytes`. Whether they inflate
    /// to exactly `len` bytes is checked when they are used.
    pub fn deflated(len: usize, bytes: Vec<u8>) -> Window {
        Window {
            len,
            deflated: true,
            bytes: Kept::Own(bytes.into_boxed_slice()),
        }
    }

    /// A window of `len` raw bytes kept, raw or deflated, as the `stored` bytes at `offset`
    /// of the index file `file`.
    pub fn in_file(
        len: usize,
        deflated: bool,
        file: Arc<File>,
        offset: u64,
        stored: usize,
    ) -> Window {
        Window {
            len,
            deflated,
            bytes: Kept::InFile {
                file,
                offset,
                len: stored,
            },
        }
    }

    /// Length of the raw window.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes as kept, and whether they are deflated.
    pub fn stored(&self) -> io::Result<(bool, std::borrow::Cow<'_, [u8]>)> {
        Ok((self.deflated, self.bytes.get()?))
    }

    /// The raw window; `InvalidData` if the deflated form does not inflate to its length.
    pub fn bytes(&self) -> io::Result<std::borrow::Cow<'_, [u8]>> {
        let stored = self.bytes.get()?;
        if !self.deflated {
            return Ok(stored);
        }
        let mut out = Vec::with_capacity(self.len);
        let mut inflater = io::Read::take(
            flate2::read::DeflateDecoder::new(&stored[..]),
            self.len as u64 + 1,
        );
        io::Read::read_to_end(&mut inflater, &mut out)
            .ok()
            .filter(|_| out.len() == self.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a gzip checkpoint's window in the layer index is corrupt",
                )
            })?;
        Ok(std::borrow::Cow::Owned(out))
    }
}

/// Windows are equal when their raw bytes are, however they are kept.
impl PartialEq for Window {
    fn eq(&self, other: &Window) -> bool {
        self.len == other.len
            && match (self.bytes(), other.bytes()) {
                (Ok(a), Ok(b)) => a == b,
                _ => match (self.stored(), other.stored()) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => false,
                },
            }
    }
}

impl Eq for Window {}

impl From<Vec<u8>> for Window {
    fn from(bytes: Vec<u8>) -> Window {
        Window::raw(bytes)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the gzip stream: {0}")]
    Read(#[source] io::Error),
    #[error("writing the uncompressed stream: {0}")]
    Sink(#[source] io::Error),
    #[error(
        "the gzip stream is corrupt near compressed byte {offset}: {source}; the blob is \
         damaged: pull the image again"
    )]
    Corrupt {
        offset: u64,
        #[source]
        source: zlib::Error,
    },
    #[error(
        "the gzip stream ends early, after {offset} compressed bytes: the blob is truncated; \
         pull the image again"
    )]
    Truncated { offset: u64 },
    #[error("the gzip stream stalled at compressed byte {offset} without making progress")]
    Stalled { offset: u64 },
    #[error(
        "unexpected data at compressed byte {offset}, after the last gzip member: the blob is \
         damaged or not a gzip stream"
    )]
    TrailingGarbage { offset: u64 },
    #[error("the gzip checkpoints are inconsistent ({0}); rebuild the layer index")]
    BadIndex(&'static str),
    #[error("starting zlib: {0}")]
    Zlib(#[source] zlib::Error),
}

/// Inflate the whole gzip stream `input` (one or more members) into `sink`, and return the
/// checkpoints: one at the start of the stream, then one at the first block boundary after every
/// `span` bytes of output (a `span` of 0 counts as 1).
///
/// Every byte of `input` is consumed: all members, and zero bytes after the last one (padding
/// some tools add). Anything else after the last member, a truncated stream, invalid deflate
/// data, or a wrong CRC-32 or size in a member's trailer is an error.
pub fn inflate_indexed(
    input: &mut dyn BufRead,
    sink: &mut dyn Write,
    span: u64,
) -> Result<Vec<Checkpoint>, Error> {
    let span = span.max(1);
    let mut z = Inflater::new(Format::Gzip).map_err(Error::Zlib)?;
    // Output accumulates after the window kept from the previous chunk.
    let mut out = vec![0u8; WINDOW + OUT_CHUNK];
    let mut filled = 0usize;
    let mut flushed = 0usize;
    let mut total_in = 0u64;
    let mut total_out = 0u64;
    let mut member_start = 0u64;
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    let mut stalls = 0u32;

    if input.fill_buf().map_err(Error::Read)?.is_empty() {
        return Err(Error::Truncated { offset: 0 });
    }
    loop {
        if filled == out.len() {
            sink.write_all(out.get(flushed..).unwrap_or_default())
                .map_err(Error::Sink)?;
            out.copy_within(filled - WINDOW.., 0);
            filled = WINDOW;
            flushed = WINDOW;
        }
        // Until a checkpoint is due, inflate freely but no further than where it becomes due;
        // from there, stop at every block boundary until one is taken. (Stopping at every
        // block all along costs ~10%: zlib copies its window on every return.)
        let room = out.get_mut(filled..).unwrap_or_default();
        let due = checkpoints.last().map_or(0, |c| c.out.saturating_add(span));
        let (room, flush) = match due.checked_sub(total_out) {
            Some(left) if left > 0 => {
                let n = usize::try_from(left).map_or(room.len(), |n| n.min(room.len()));
                (room.get_mut(..n).unwrap_or_default(), Flush::None)
            }
            _ => (room, Flush::Block),
        };
        let chunk = input.fill_buf().map_err(Error::Read)?;
        let at_eof = chunk.is_empty();
        let step = z
            .inflate(chunk, room, flush)
            .map_err(|source| Error::Corrupt {
                offset: total_in,
                source,
            })?;
        input.consume(step.consumed);
        total_in += step.consumed as u64;
        filled += step.produced;
        total_out += step.produced as u64;

        match step.status {
            Status::StreamEnd => {
                if !next_member(input, &mut total_in)? {
                    break;
                }
                z.reset(Format::Gzip).map_err(Error::Zlib)?;
                member_start = total_out;
                stalls = 0;
                continue;
            }
            Status::Ok => stalls = 0,
            Status::NoProgress if at_eof => return Err(Error::Truncated { offset: total_in }),
            Status::NoProgress => {
                stalls += 1;
                if stalls > MAX_STALLS {
                    return Err(Error::Stalled { offset: total_in });
                }
            }
        }

        let Some(unused) = z.block_boundary() else {
            continue;
        };
        let due = match checkpoints.last() {
            None => true,
            Some(last) => total_out - last.out >= span,
        };
        if due {
            // The inflater holds `unused` bits of input it has taken: whole bytes of them are
            // still to come after the checkpoint, the rest are the high bits of the byte before.
            let whole = u64::from(unused / 8);
            let bits = (unused % 8) as u8;
            let input_at = total_in
                .checked_sub(whole)
                .ok_or(Error::Stalled { offset: total_in })?;
            let keep =
                usize::try_from((total_out - member_start).min(WINDOW as u64)).unwrap_or(WINDOW);
            let window = Window::raw(
                out.get(filled.saturating_sub(keep)..filled)
                    .unwrap_or_default()
                    .to_vec(),
            );
            checkpoints.push(Checkpoint {
                out: total_out,
                input: input_at,
                bits,
                window,
            });
        }
    }
    sink.write_all(out.get(flushed..filled).unwrap_or_default())
        .map_err(Error::Sink)?;
    Ok(checkpoints)
}

/// After a member's end: is another member next (`true`), or the end of the stream (`false`,
/// after consuming any zero padding)?
fn next_member(input: &mut dyn BufRead, total_in: &mut u64) -> Result<bool, Error> {
    let buf = input.fill_buf().map_err(Error::Read)?;
    match buf.first() {
        None => return Ok(false),
        // zlib checks the rest of the header.
        Some(&GZIP_MAGIC0) => return Ok(true),
        Some(0) => {}
        Some(_) => return Err(Error::TrailingGarbage { offset: *total_in }),
    }
    loop {
        let buf = input.fill_buf().map_err(Error::Read)?;
        if buf.is_empty() {
            return Ok(false);
        }
        if let Some(at) = buf.iter().position(|&b| b != 0) {
            return Err(Error::TrailingGarbage {
                offset: *total_in + at as u64,
            });
        }
        let n = buf.len();
        input.consume(n);
        *total_in += n as u64;
    }
}

/// Which span of a layer: the cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpanKey {
    /// Any number unique among the layers sharing one cache.
    pub layer: u64,
    /// The span's number within its layer (a checkpoint or frame index).
    pub span: u64,
}

/// Decompressed spans of compressed layers, least recently used evicted first, holding at most
/// `budget` bytes. Shared by all readers of a mount (and usable by both gzip and zstd readers).
///
/// Concurrent readers of one missing span wait for the first to decompress it rather than each
/// decompressing it again (the kernel reads a big file ahead on several threads at once).
pub struct SpanCache {
    budget: u64,
    lru: Mutex<Lru>,
    loaded: Condvar,
    /// Threads that decompress the spans a sequential reader will want next; started on the
    /// first prefetch, none on a single CPU.
    prefetcher: std::sync::OnceLock<Option<Prefetcher>>,
}

/// A decompression job for a prefetch thread.
type Job = Box<dyn FnOnce() + Send>;

struct Prefetcher {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

impl Prefetcher {
    /// One thread per CPU but the reader's own, at most `PREFETCH_THREADS`; `None` on one CPU.
    fn start() -> Option<Prefetcher> {
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .saturating_sub(1)
            .min(PREFETCH_THREADS);
        if threads == 0 {
            return None;
        }
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(PREFETCH_QUEUE);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name("layerfs-prefetch".into())
                .spawn(move || {
                    loop {
                        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break, // the cache is gone
                        }
                    }
                });
            if spawned.is_err() {
                break;
            }
        }
        Some(Prefetcher { jobs })
    }
}

#[derive(Default)]
struct Lru {
    slots: HashMap<SpanKey, Slot>,
    /// Use tick → key, oldest first; only ready spans are in it.
    order: BTreeMap<u64, SpanKey>,
    used: u64,
    tick: u64,
}

enum Slot {
    /// Some thread is decompressing this span; wait on `SpanCache::loaded`.
    Loading,
    Ready {
        data: Arc<[u8]>,
        tick: u64,
    },
}

impl Lru {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn touch(&mut self, key: SpanKey) -> Option<Arc<[u8]>> {
        let tick = self.next_tick();
        let Some(Slot::Ready { data, tick: old }) = self.slots.get_mut(&key) else {
            return None;
        };
        let previous = std::mem::replace(old, tick);
        let data = data.clone();
        self.order.remove(&previous);
        self.order.insert(tick, key);
        Some(data)
    }

    fn insert(&mut self, key: SpanKey, data: Arc<[u8]>, budget: u64) {
        let len = data.len() as u64;
        while self.used + len > budget {
            let Some((_, old)) = self.order.pop_first() else {
                break;
            };
            if let Some(Slot::Ready { data, .. }) = self.slots.remove(&old) {
                self.used -= data.len() as u64;
            }
        }
        if self.used + len > budget {
            self.slots.remove(&key);
            return;
        }
        let tick = self.next_tick();
        self.used += len;
        self.order.insert(tick, key);
        self.slots.insert(key, Slot::Ready { data, tick });
    }
}

impl SpanCache {
    pub fn new(budget: u64) -> SpanCache {
        SpanCache {
            budget,
            lru: Mutex::new(Lru::default()),
            loaded: Condvar::new(),
            prefetcher: std::sync::OnceLock::new(),
        }
    }

    /// The most bytes the cache holds.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of spans held now.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    /// The largest span worth caching; readers decompress larger ones straight into the
    /// caller's buffer.
    pub fn max_entry(&self) -> u64 {
        self.budget / CACHED_SHARE
    }

    /// The span `key`, from the cache or from `load` (called at most once at a time per key;
    /// on error nothing is cached and the error is returned).
    pub fn get_or_load(
        &self,
        key: SpanKey,
        load: impl FnOnce() -> io::Result<Vec<u8>>,
    ) -> io::Result<Arc<[u8]>> {
        let mut lru = self.lock();
        loop {
            match lru.slots.get(&key) {
                Some(Slot::Ready { .. }) => {
                    if let Some(data) = lru.touch(key) {
                        return Ok(data);
                    }
                }
                Some(Slot::Loading) => {
                    lru = self
                        .loaded
                        .wait(lru)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                None => break,
            }
        }
        lru.slots.insert(key, Slot::Loading);
        drop(lru);

        let loading = Loading { cache: self, key };
        let data: Arc<[u8]> = load()?.into();
        self.lock().insert(key, data.clone(), self.budget);
        drop(loading);
        Ok(data)
    }

    /// Decompress span `key` with `load` on a prefetch thread, unless it is cached, being
    /// loaded, or the prefetch queue is full (a prefetch is only ever a hint). Readers that
    /// want it meanwhile wait for it as for any span being loaded.
    pub fn prefetch(
        self: &Arc<Self>,
        key: SpanKey,
        load: impl FnOnce() -> io::Result<Vec<u8>> + Send + 'static,
    ) {
        let Some(prefetcher) = self.prefetcher.get_or_init(Prefetcher::start) else {
            return;
        };
        {
            let mut lru = self.lock();
            if lru.slots.contains_key(&key) {
                return;
            }
            lru.slots.insert(key, Slot::Loading);
        }
        let cache = Arc::clone(self);
        let job: Job = Box::new(move || {
            let loading = Loading { cache: &cache, key };
            // A failure is left to the reader that wants the span, which retries and reports.
            if let Ok(data) = load() {
                cache.lock().insert(key, data.into(), cache.budget);
            }
            drop(loading);
        });
        if prefetcher.jobs.try_send(job).is_err() {
            drop(Loading { cache: self, key });
        }
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        // The state stays consistent even if a holder panicked: every update is complete
        // before the lock is released.
        self.lru.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clears a `Loading` slot (when the load failed) and wakes the threads waiting on it.
struct Loading<'a> {
    cache: &'a SpanCache,
    key: SpanKey,
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        let mut lru = self.cache.lock();
        if matches!(lru.slots.get(&self.key), Some(Slot::Loading)) {
            lru.slots.remove(&self.key);
        }
        drop(lru);
        self.cache.loaded.notify_all();
    }
}

/// Decompress span `i` of `blob`, `len` bytes, whole, and check that the deflate stream
/// reaches the next checkpoint exactly there (or ends there, for the last span). Without a CRC
/// for a span, that is what catches most damage to the blob after it was verified.
fn inflate_span(
    blob: &File,
    checkpoints: &[Checkpoint],
    i: usize,
    len: u64,
) -> io::Result<Vec<u8>> {
    let len = usize::try_from(len)
        .map_err(|_| invalid(format!("span {i} of the gzip layer is too large")))?;
    let checkpoint = checkpoints
        .get(i)
        .ok_or_else(|| invalid(format!("gzip checkpoint {i} is missing")))?;
    let mut out = vec![0u8; len];
    let mut resume = Resume::at(blob, checkpoint)?;
    resume.fill_exact(&mut out)?;
    match checkpoints.get(i + 1) {
        Some(next) => resume.expect_boundary(next)?,
        None => resume.expect_end()?,
    }
    Ok(out)
}

/// Positional reads of a gzip layer's uncompressed stream, through its checkpoints. Shared by
/// many threads: every read uses `pread`, and decompressed spans live in the shared cache.
pub struct GzipReader {
    blob: Arc<File>,
    checkpoints: Arc<[Checkpoint]>,
    size: u64,
    cache: Arc<SpanCache>,
    layer: u64,
    /// Set by [`GzipReader::with_local_copy`] when spans are too large to cache.
    local: Option<LocalCopy>,
    /// The span the last read ended in: a read that moves on to the next one is sequential,
    /// and the spans after it are decompressed ahead on other threads.
    last_span: AtomicU64,
}

impl GzipReader {
    /// A reader of the gzip blob `blob`, whose uncompressed stream is `size` bytes long and was
    /// indexed into `checkpoints`. `layer` tells this layer's spans apart from other layers' in
    /// `cache`.
    pub fn new(
        blob: File,
        checkpoints: impl Into<Arc<[Checkpoint]>>,
        size: u64,
        cache: Arc<SpanCache>,
        layer: u64,
    ) -> Result<GzipReader, Error> {
        let checkpoints = checkpoints.into();
        validate(&checkpoints, size)?;
        Ok(GzipReader {
            blob: Arc::new(blob),
            checkpoints,
            size,
            cache,
            layer,
            local: None,
            last_span: AtomicU64::new(u64::MAX),
        })
    }

    /// If some span is too large to cache, serve reads from a decompressed copy of the whole
    /// layer at `path` instead, made on the first read (see `LocalCopy`). Without this, such
    /// spans are inflated from their checkpoint on every read. Huge spans come from deflate
    /// streams written in huge blocks: zlib-ng's and zlib-rs' fastest level writes one block
    /// per flush, which may be the whole layer.
    pub fn with_local_copy(mut self, path: PathBuf) -> GzipReader {
        if self.largest_span() > self.cache.max_entry() {
            self.local = Some(LocalCopy::new(path, self.size));
        }
        self
    }

    /// Whether reads go through a local decompressed copy rather than span by span.
    pub fn uses_local_copy(&self) -> bool {
        self.local.is_some()
    }

    /// Length of the uncompressed stream.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Read up to `buf.len()` bytes at `offset` of the uncompressed stream; fewer only at its
    /// end (0 at or past it). Corrupt compressed data is an `InvalidData` error.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(local) = &self.local {
            return local.read_at(offset, buf, &|out| self.inflate_all(out));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset.saturating_add(done as u64);
            if pos >= self.size {
                break;
            }
            let (i, start, end) = self.span_of(pos)?;
            let rest = buf.get_mut(done..).unwrap_or_default();
            let want = usize::try_from(end - pos).map_or(rest.len(), |n| n.min(rest.len()));
            let dst = rest.get_mut(..want).unwrap_or_default();
            let within = pos - start;
            if end - start <= self.cache.max_entry() {
                let key = SpanKey {
                    layer: self.layer,
                    span: i as u64,
                };
                let span = self
                    .cache
                    .get_or_load(key, || self.inflate_span(i, end - start))?;
                self.read_ahead(i);
                let src = usize::try_from(within)
                    .ok()
                    .and_then(|w| span.get(w..w.checked_add(want)?))
                    .ok_or_else(|| invalid(format!("span {i} of the gzip layer is short")))?;
                dst.copy_from_slice(src);
            } else {
                // Too large to cache: inflate just what this read needs.
                let mut resume = Resume::at(&self.blob, self.checkpoint(i)?)?;
                resume.skip(within)?;
                resume.fill_exact(dst)?;
            }
            done += want;
        }
        Ok(done)
    }

    /// The span holding `pos` (< size): its checkpoint index, first and end offsets.
    fn span_of(&self, pos: u64) -> io::Result<(usize, u64, u64)> {
        let next = self.checkpoints.partition_point(|c| c.out <= pos);
        let i = next
            .checked_sub(1)
            .ok_or_else(|| invalid("no gzip checkpoint before the offset".to_owned()))?;
        let start = self.checkpoint(i)?.out;
        let end = self.checkpoints.get(next).map_or(self.size, |c| c.out);
        Ok((i, start, end))
    }

    fn largest_span(&self) -> u64 {
        let ends = self.checkpoints.iter().skip(1).map(|c| c.out);
        self.checkpoints
            .iter()
            .zip(ends.chain([self.size]))
            .map(|(c, end)| end - c.out)
            .max()
            .unwrap_or(0)
    }

    fn checkpoint(&self, i: usize) -> io::Result<&Checkpoint> {
        self.checkpoints
            .get(i)
            .ok_or_else(|| invalid(format!("gzip checkpoint {i} is missing")))
    }

    fn inflate_span(&self, i: usize, len: u64) -> io::Result<Vec<u8>> {
        inflate_span(&self.blob, &self.checkpoints, i, len)
    }

    /// After a read in span `i`: if the previous read ended in span `i - 1`, have the next
    /// `READ_AHEAD` spans decompressed on prefetch threads.
    fn read_ahead(&self, i: usize) {
        let i = i as u64;
        let previous = self.last_span.swap(i, Ordering::Relaxed);
        if previous.checked_add(1) != Some(i) {
            return;
        }
        for ahead in i + 1..=i + READ_AHEAD {
            let Ok(j) = usize::try_from(ahead) else { break };
            let Some(c) = self.checkpoints.get(j) else {
                break;
            };
            let end = self.checkpoints.get(j + 1).map_or(self.size, |n| n.out);
            let len = end - c.out;
            if len > self.cache.max_entry() {
                break;
            }
            let key = SpanKey {
                layer: self.layer,
                span: ahead,
            };
            let (blob, checkpoints) = (self.blob.clone(), self.checkpoints.clone());
            self.cache
                .prefetch(key, move || inflate_span(&blob, &checkpoints, j, len));
        }
    }

    /// Inflate the whole blob into `out`, checking every member's CRC-32 and size.
    fn inflate_all(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut input = BufReader::with_capacity(COPY_BUFFER, Pread::new(&self.blob));
        inflate_indexed(&mut input, out, u64::MAX)
            .map(drop)
            .map_err(|e| invalid(e.to_string()))
    }
}

impl super::reader::ReadAt for GzipReader {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        GzipReader::read_at(self, offset, buf)
    }
}

fn validate(checkpoints: &[Checkpoint], size: u64) -> Result<(), Error> {
    let Some(first) = checkpoints.first() else {
        return if size == 0 {
            Ok(())
        } else {
            Err(Error::BadIndex("no checkpoint for a non-empty stream"))
        };
    };
    if first.out != 0 {
        return Err(Error::BadIndex("the first checkpoint is not at offset 0"));
    }
    for pair in checkpoints.windows(2) {
        if let [a, b] = pair
            && (b.out < a.out || b.input < a.input)
        {
            return Err(Error::BadIndex("checkpoints out of order"));
        }
    }
    for c in checkpoints {
        if c.bits > 7 || (c.bits > 0 && c.input == 0) {
            return Err(Error::BadIndex("a checkpoint's bit position is invalid"));
        }
        if c.window.len() > WINDOW {
            return Err(Error::BadIndex("a checkpoint's window is over 32 KiB"));
        }
        if c.out > size {
            return Err(Error::BadIndex(
                "a checkpoint lies past the end of the stream",
            ));
        }
    }
    Ok(())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn zlib_error(at: u64, e: zlib::Error) -> io::Error {
    invalid(format!(
        "the gzip layer is corrupt near compressed byte {at}: {e}"
    ))
}

/// Inflating from a checkpoint, reading the blob with `pread`.
struct Resume<'a> {
    blob: &'a File,
    z: Inflater,
    /// Still in the checkpoint's member, inflated raw: zlib will not consume its trailer.
    raw: bool,
    /// Next blob offset to read.
    pos: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<'a> Resume<'a> {
    fn at(blob: &'a File, c: &Checkpoint) -> io::Result<Resume<'a>> {
        let mut z = Inflater::new(Format::Raw).map_err(|e| zlib_error(c.input, e))?;
        if c.bits > 0 {
            let mut byte = [0u8; 1];
            let at = c.input.saturating_sub(1);
            blob.read_exact_at(&mut byte, at)
                .map_err(|e| short(e, at))?;
            let value = byte[0] >> (8 - c.bits);
            z.prime(c.bits, u16::from(value))
                .map_err(|e| zlib_error(c.input, e))?;
        }
        if !c.window.is_empty() {
            z.set_window(&c.window.bytes()?)
                .map_err(|e| zlib_error(c.input, e))?;
        }
        Ok(Resume {
            blob,
            z,
            raw: true,
            pos: c.input,
            buf: vec![0u8; READ_CHUNK],
            start: 0,
            end: 0,
            eof: false,
        })
    }

    /// Blob offset of the next byte not yet given to zlib.
    fn consumed(&self) -> u64 {
        self.pos - (self.end - self.start) as u64
    }

    /// Inflate and throw away `n` bytes.
    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let mut scratch = vec![0u8; usize::try_from(n).map_or(SKIP_CHUNK, |n| n.min(SKIP_CHUNK))];
        while n > 0 {
            let len = usize::try_from(n).map_or(scratch.len(), |n| n.min(scratch.len()));
            self.fill_exact(scratch.get_mut(..len).unwrap_or_default())?;
            n -= len as u64;
        }
        Ok(())
    }

    /// Inflate exactly `out.len()` bytes into `out`. Stops at every block boundary on the way
    /// (cheap: blocks are tens of KiB), so that it never runs past one unseen and
    /// [`Resume::expect_boundary`] can check where the span ends.
    fn fill_exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut filled = 0usize;
        let mut stalls = 0u32;
        while filled < out.len() {
            let dst = out.get_mut(filled..).unwrap_or_default();
            let step = self.step(dst, Flush::Block)?;
            filled += step.produced;
            match step.status {
                Status::Ok | Status::StreamEnd => stalls = 0,
                Status::NoProgress if self.eof && self.start == self.end => {
                    return Err(invalid(format!(
                        "the gzip layer ends early, at compressed byte {}",
                        self.pos
                    )));
                }
                Status::NoProgress => {
                    stalls += 1;
                    if stalls > MAX_STALLS {
                        return Err(invalid(format!(
                            "inflating the gzip layer stalled at compressed byte {}",
                            self.consumed()
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// After a span's output: check that no more output comes before the next block boundary,
    /// and that this boundary is exactly checkpoint `next`.
    fn expect_boundary(&mut self, next: &Checkpoint) -> io::Result<()> {
        // Positions in bits from the start of the blob. Boundaries before `next` (empty blocks
        // the indexing pass ran past) are fine; output or a boundary after it is not.
        let target = next
            .input
            .saturating_mul(8)
            .saturating_sub(u64::from(next.bits));
        for _ in 0..MAX_STALLS {
            if let Some(unused) = self.z.block_boundary() {
                let here = self
                    .consumed()
                    .saturating_mul(8)
                    .saturating_sub(u64::from(unused));
                if here == target {
                    return Ok(());
                }
                if here > target {
                    break;
                }
            }
            // No output space: zlib can only finish the block (or a member and the next
            // header); it stalls if the stream has more output here than the index says.
            self.step(&mut [], Flush::Block)?;
        }
        Err(invalid(format!(
            "the gzip layer does not match its index: a block should end at compressed byte {} \
             but it does not (near byte {}); the blob is damaged or the index is stale",
            next.input,
            self.consumed()
        )))
    }

    /// After the last span's output: check that the deflate stream ends there (and, if this
    /// member was read from its start, that its trailer is right).
    fn expect_end(&mut self) -> io::Result<()> {
        for _ in 0..MAX_STALLS {
            if self.step(&mut [], Flush::None)?.status == Status::StreamEnd {
                return Ok(());
            }
        }
        Err(invalid(format!(
            "the gzip layer does not end where its index says (near compressed byte {}); the \
             blob is damaged or the index is stale",
            self.consumed()
        )))
    }

    /// One call to zlib with whatever input is buffered (read more first if none), moving on
    /// to the next member at the end of one.
    fn step(&mut self, out: &mut [u8], flush: Flush) -> io::Result<zlib::Step> {
        if self.start == self.end && !self.eof {
            self.refill()?;
        }
        let at = self.consumed();
        let input = self.buf.get(self.start..self.end).unwrap_or_default();
        let step = self
            .z
            .inflate(input, out, flush)
            .map_err(|e| zlib_error(at, e))?;
        self.start += step.consumed;
        if step.status == Status::StreamEnd {
            self.next_member()?;
        }
        Ok(step)
    }

    /// Past the end of a member: skip its trailer if zlib did not read it, and expect the next
    /// member's header (checked by zlib, which then also checks that member's trailer).
    fn next_member(&mut self) -> io::Result<()> {
        if self.raw {
            let buffered = (self.end - self.start) as u64;
            if buffered >= TRAILER {
                self.start += TRAILER as usize;
            } else {
                self.pos += TRAILER - buffered;
                self.start = self.end;
            }
            self.raw = false;
        }
        self.z
            .reset(Format::Gzip)
            .map_err(|e| zlib_error(self.pos, e))
    }

    fn refill(&mut self) -> io::Result<()> {
        loop {
            match self.blob.read_at(&mut self.buf, self.pos) {
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    self.pos += n as u64;
                    self.eof = n == 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn short(e: io::Error, at: u64) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        invalid(format!("the gzip layer ends before compressed byte {at}"))
    } else {
        e
    }
}

/// A whole layer decompressed once into a local file, for layers whose spans (gzip) or frames
/// (zstd) are too large to cache. Made on the first read, under a temporary name beside the
/// final one: written, checked to be exactly the stream's length, synced and renamed, so a
/// crash never leaves a partial copy under the final name. An existing file of the right
/// length is reused as it is; one of the wrong length is replaced.
pub(super) struct LocalCopy {
    path: PathBuf,
    size: u64,
    /// The open copy once made; the lock also makes other readers wait while one makes it.
    file: Mutex<Option<Arc<File>>>,
}

impl LocalCopy {
    pub(super) fn new(path: PathBuf, size: u64) -> LocalCopy {
        LocalCopy {
            path,
            size,
            file: Mutex::new(None),
        }
    }

    /// Read up to `buf.len()` bytes at `offset`, fewer only at the end of the stream; `make`
    /// writes the whole uncompressed stream if the copy must be made.
    pub(super) fn read_at(
        &self,
        offset: u64,
        buf: &mut [u8],
        make: &dyn Fn(&mut dyn Write) -> io::Result<()>,
    ) -> io::Result<usize> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let n = usize::try_from(self.size - offset).map_or(buf.len(), |n| n.min(buf.len()));
        let file = self.file(make)?;
        let dst = buf.get_mut(..n).unwrap_or_default();
        file.read_exact_at(dst, offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid(format!(
                    "{} is shorter than the layer; delete it",
                    self.path.display()
                ))
            } else {
                e
            }
        })?;
        Ok(n)
    }

    fn file(&self, make: &dyn Fn(&mut dyn Write) -> io::Result<()>) -> io::Result<Arc<File>> {
        let mut slot = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = &*slot {
            return Ok(file.clone());
        }
        let file = match File::open(&self.path) {
            Ok(file) if file.metadata()?.len() == self.size => file,
            Ok(_) => {
                log::info!(
                    "{} has the wrong length; decompressing the layer again",
                    self.path.display()
                );
                self.make(make)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.make(make)?,
            Err(e) => return Err(e),
        };
        let file = Arc::new(file);
        *slot = Some(file.clone());
        Ok(file)
    }

    fn make(&self, make: &dyn Fn(&mut dyn Write) -> io::Result<()>) -> io::Result<File> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = self
            .path
            .file_name()
            .ok_or_else(|| invalid(format!("{} names no file", self.path.display())))?;
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut tmp_name = name.to_owned();
        tmp_name.push(format!(
            ".tmp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = self.path.with_file_name(tmp_name);
        log::info!("decompressing a layer once to {}", self.path.display());
        let result = (|| {
            let file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            let mut out = BufWriter::with_capacity(COPY_BUFFER, file);
            make(&mut out)?;
            let file = out.into_inner().map_err(|e| e.into_error())?;
            let len = file.metadata()?.len();
            if len != self.size {
                return Err(invalid(format!(
                    "the layer decompresses to {len} bytes, but its index says {}; rebuild \
                     the layer index",
                    self.size
                )));
            }
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(&self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// A `Read` of a file by `pread`, leaving the file's shared position alone.
pub(super) struct Pread<'a> {
    file: &'a File,
    pos: u64,
}

impl<'a> Pread<'a> {
    pub(super) fn new(file: &'a File) -> Pread<'a> {
        Pread { file, pos: 0 }
    }
}

impl io::Read for Pread<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{BufReader, Read};
    use std::process::Command;

    /// Deterministic pseudo-random numbers for tests (xorshift64).
    pub(crate) struct XorShift(pub(crate) u64);

    impl XorShift {
        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// Text-like data that compresses about 3:1.
    pub(crate) fn semi(len: usize, seed: u64) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "layer",
            "tar",
            "gzip",
            "window",
            "span",
            "usr",
            "lib",
            "bin",
            "etc",
            "share",
            "x86_64",
            "linux",
            "gnu",
            "so",
            "python3",
            "site-packages",
            "__init__",
            "README",
            "copyright",
            "changelog",
            "debian",
            "alpine",
            "musl",
            "busybox",
            "zoneinfo",
        ];
        let mut rng = XorShift(seed | 1);
        let mut out = Vec::with_capacity(len + 32);
        while out.len() < len {
            match rng.below(8) {
                0 => out.extend(format!("{:x}", rng.next()).as_bytes()),
                1 => out.push(b'\n'),
                2 => out.push(b'/'),
                _ => out.extend(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes()),
            }
            out.push(b' ');
        }
        out.truncate(len);
        out
    }

    pub(crate) fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = XorShift(seed | 1);
        (0..len).map(|_| rng.next() as u8).collect()
    }

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn index(blob: &[u8], span: u64) -> Result<(Vec<u8>, Vec<Checkpoint>), Error> {
        let mut out = Vec::new();
        let mut input = BufReader::with_capacity(64 << 10, blob);
        let cps = inflate_indexed(&mut input, &mut out, span)?;
        Ok((out, cps))
    }

    fn blob_file(blob: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(blob).unwrap();
        f
    }

    fn reader(blob: &[u8], cps: Vec<Checkpoint>, size: u64, budget: u64) -> GzipReader {
        let cache = Arc::new(SpanCache::new(budget));
        GzipReader::new(blob_file(blob), cps, size, cache, 7).unwrap()
    }

    /// Index `blob`, check the output is `data`, then read it back at random places.
    fn check(blob: &[u8], data: &[u8], span: u64, budget: u64) -> Vec<Checkpoint> {
        let (out, cps) = index(blob, span).unwrap();
        assert_eq!(out.len(), data.len());
        assert!(out == data, "inflated output differs");
        assert_eq!(cps.first().map(|c| c.out), Some(0));
        for pair in cps.windows(2) {
            assert!(pair[1].out - pair[0].out >= span.max(1));
        }
        let r = reader(blob, cps.clone(), data.len() as u64, budget);
        let mut rng = XorShift(data.len() as u64 ^ 0x9e37_79b9_7f4a_7c15);
        let len = data.len() as u64;
        for _ in 0..300 {
            let off = rng.below(len + 64);
            let n = rng.below(3 * span.min(1 << 20) + 10) as usize;
            let mut buf = vec![0xaau8; n];
            let got = r.read_at(off, &mut buf).unwrap();
            let want = data
                .get(off as usize..)
                .map_or(&[][..], |d| &d[..n.min(d.len())]);
            assert_eq!(got, want.len(), "read of {n} at {off}");
            assert!(&buf[..got] == want, "read of {n} at {off} differs");
            assert!(r.cache.used() <= r.cache.budget());
        }
        // Front to back, in FUSE-sized pieces.
        let mut back = Vec::with_capacity(data.len());
        let mut buf = vec![0u8; 128 << 10];
        loop {
            let n = r.read_at(back.len() as u64, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            back.extend_from_slice(&buf[..n]);
        }
        assert!(back == data, "sequential read differs");
        assert_eq!(r.read_at(len, &mut buf).unwrap(), 0);
        assert_eq!(r.read_at(len + 1000, &mut buf).unwrap(), 0);
        assert_eq!(r.read_at(u64::MAX, &mut buf).unwrap(), 0);
        cps
    }

    #[test]
    fn single_member_levels_1_6_and_9() {
        let data = semi(3 << 20, 1);
        for level in [1, 6, 9] {
            // The budget fits level 1's single 3 MiB span in the cache.
            let cps = check(&gz(&data, level), &data, 256 << 10, 16 << 20);
            // zlib-rs' level 1 writes one block per flush: a single span.
            if level > 1 {
                assert!(cps.len() >= 8, "{} checkpoints", cps.len());
            }
        }
    }

    #[test]
    fn huge_blocks_are_read_through_a_local_copy() {
        let data = semi(6 << 20, 16);
        let blob = gz(&data, 1);
        let (_, cps) = index(&blob, DEFAULT_SPAN).unwrap();
        assert!(cps.len() <= 2, "{} checkpoints", cps.len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache").join("layer.tar");
        let cache = Arc::new(SpanCache::new(8 << 20));
        let r = GzipReader::new(blob_file(&blob), cps.clone(), data.len() as u64, cache, 1)
            .unwrap()
            .with_local_copy(path.clone());
        assert!(r.uses_local_copy());
        assert!(!path.exists());
        let mut buf = vec![0u8; 100_000];
        for off in [5_000_000u64, 0, 6 << 20, (6 << 20) - 10] {
            let n = r.read_at(off, &mut buf).unwrap();
            let want = &data[off as usize..(off as usize + buf.len()).min(data.len())];
            assert_eq!(n, want.len());
            assert!(&buf[..n] == want);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), data.len() as u64);
        assert_eq!(
            std::fs::read_dir(dir.path().join("cache")).unwrap().count(),
            1
        );
        // Small spans never need one.
        let blob6 = gz(&data, 6);
        let (_, cps6) = index(&blob6, DEFAULT_SPAN).unwrap();
        let cache = Arc::new(SpanCache::new(8 << 20));
        let r = GzipReader::new(blob_file(&blob6), cps6, data.len() as u64, cache, 1)
            .unwrap()
            .with_local_copy(dir.path().join("other.tar"));
        assert!(!r.uses_local_copy());
        // A damaged blob fails the copy, which is not left behind.
        let cache = Arc::new(SpanCache::new(8 << 20));
        let mut bad = blob.clone();
        let n = bad.len();
        bad[n - 6] ^= 1;
        let path = dir.path().join("bad.tar");
        let r = GzipReader::new(blob_file(&bad), cps, data.len() as u64, cache, 1)
            .unwrap()
            .with_local_copy(path.clone());
        let err = r.read_at(0, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn default_span_gives_about_one_checkpoint_per_mib() {
        let data = semi(8 << 20, 2);
        let cps = check(&gz(&data, 6), &data, DEFAULT_SPAN, DEFAULT_CACHE_BYTES);
        assert!((6..=9).contains(&cps.len()), "{} checkpoints", cps.len());
        assert!(cps.iter().skip(1).all(|c| c.window.len() == WINDOW));
        assert!(cps[0].window.is_empty());
    }

    #[test]
    fn multi_member_with_empty_members() {
        let data = semi(2 << 20, 3);
        let cuts = [
            0usize,
            0,
            1000,
            300_000,
            300_000,
            1_500_000,
            data.len(),
            data.len(),
        ];
        let mut blob = Vec::new();
        for pair in cuts.windows(2) {
            blob.extend(gz(&data[pair[0]..pair[1]], 6));
        }
        check(&blob, &data, 100 << 10, 2 << 20);
        // Spans that cross members, and checkpoints at member starts.
        check(&blob, &data, 1, 2 << 20);
        check(&blob, &data, 700 << 10, 8 << 20);
    }

    #[test]
    fn many_small_members() {
        let data = semi(600_000, 4);
        let mut blob = Vec::new();
        for chunk in data.chunks(5_000) {
            blob.extend(gz(chunk, 6));
        }
        check(&blob, &data, 64 << 10, 1 << 20);
    }

    #[test]
    fn incompressible_data() {
        let data = random(2 << 20, 5);
        check(&gz(&data, 6), &data, 200 << 10, 4 << 20);
        check(&gz(&data, 0), &data, 200 << 10, 4 << 20);
    }

    #[test]
    fn zeros_give_large_spans_from_few_bytes() {
        let data = vec![0u8; 12 << 20];
        let blob = gz(&data, 9);
        assert!(blob.len() < 100 << 10);
        check(&blob, &data, DEFAULT_SPAN, 64 << 20);
        // A cache too small for these spans: reads inflate straight into the buffer.
        check(&blob, &data, DEFAULT_SPAN, 2 << 20);
    }

    #[test]
    fn tiny_and_empty_streams() {
        check(&gz(b"hello", 6), b"hello", DEFAULT_SPAN, 1 << 20);
        let cps = check(&gz(b"", 6), b"", DEFAULT_SPAN, 1 << 20);
        assert_eq!(cps.len(), 1);
        let mut two_empty = gz(b"", 6);
        two_empty.extend(gz(b"", 1));
        check(&two_empty, b"", 1, 1 << 20);
    }

    #[test]
    fn trailing_zeros_are_consumed_but_garbage_is_an_error() {
        let data = semi(100_000, 6);
        let mut blob = gz(&data, 6);
        let n = blob.len();
        blob.extend(vec![0u8; 70_000]);
        let mut input = BufReader::with_capacity(4096, &blob[..]);
        let mut out = Vec::new();
        inflate_indexed(&mut input, &mut out, DEFAULT_SPAN).unwrap();
        assert!(out == data);
        assert_eq!(input.fill_buf().unwrap().len(), 0);

        blob.push(1);
        let err = index(&blob, DEFAULT_SPAN).unwrap_err();
        assert!(
            matches!(err, Error::TrailingGarbage { offset } if offset == n as u64 + 70_000),
            "{err}"
        );
        let mut junk = gz(&data, 6);
        junk.extend(b"junk");
        let err = index(&junk, DEFAULT_SPAN).unwrap_err();
        assert!(
            matches!(err, Error::TrailingGarbage { offset } if offset == n as u64),
            "{err}"
        );
    }

    #[test]
    fn empty_input_is_an_error() {
        let err = index(b"", DEFAULT_SPAN).unwrap_err();
        assert!(matches!(err, Error::Truncated { offset: 0 }), "{err}");
        let err = index(b"not gzip", DEFAULT_SPAN).unwrap_err();
        assert!(matches!(err, Error::Corrupt { offset: 0, .. }), "{err}");
    }

    #[test]
    fn truncated_streams_are_errors() {
        let data = semi(300_000, 7);
        let mut blob = gz(&data[..100_000], 6);
        blob.extend(gz(&data[100_000..], 6));
        let mut rng = XorShift(11);
        let mut cuts: Vec<usize> = (0..40)
            .map(|_| rng.below(blob.len() as u64) as usize)
            .collect();
        cuts.extend([1, 2, 9, 10, 11, blob.len() - 8, blob.len() - 1]);
        for cut in cuts {
            let err = index(&blob[..cut], 4096).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { .. } | Error::Corrupt { .. }),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn corrupt_streams_are_errors_never_panics() {
        let data = semi(200_000, 8);
        let blob = gz(&data, 6);
        let n = blob.len();
        // The trailer: CRC-32 and size.
        for at in [n - 8, n - 5, n - 4, n - 1] {
            let mut bad = blob.clone();
            bad[at] ^= 0x40;
            let err = index(&bad, 4096).unwrap_err();
            assert!(matches!(err, Error::Corrupt { .. }), "flip at {at}: {err}");
        }
        // Anywhere in the deflate data: an error, or (if the flip hit unused bits) the same
        // output; never a panic.
        let mut rng = XorShift(12);
        for _ in 0..200 {
            let mut bad = blob.clone();
            let at = 10 + rng.below((n - 18) as u64) as usize;
            bad[at] ^= 1 << rng.below(8);
            if let Ok((out, _)) = index(&bad, 4096) {
                assert!(out == data, "flip at {at} went undetected");
            }
        }
    }

    #[test]
    fn reads_of_a_damaged_blob_are_errors() {
        let data = semi(2 << 20, 9);
        let blob = gz(&data, 6);
        let (_, cps) = index(&blob, 128 << 10).unwrap();
        // Truncated on disk after indexing.
        let r = reader(
            &blob[..blob.len() / 2],
            cps.clone(),
            data.len() as u64,
            4 << 20,
        );
        let mut buf = vec![0u8; 4096];
        let err = r.read_at(data.len() as u64 - 10, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // Overwritten in the middle of a span.
        let mut bad = blob.clone();
        let at = (cps[4].input as usize + cps[5].input as usize) / 2;
        for b in &mut bad[at..at + 64] {
            *b = !*b;
        }
        let r = reader(&bad, cps.clone(), data.len() as u64, 4 << 20);
        let err = r.read_at(cps[5].out - 100, &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // A bad checkpoint list is refused up front.
        let cache = Arc::new(SpanCache::new(1 << 20));
        let mut reordered = cps.clone();
        reordered.swap(1, 2);
        assert!(matches!(
            GzipReader::new(
                blob_file(&blob),
                reordered,
                data.len() as u64,
                cache.clone(),
                0
            ),
            Err(Error::BadIndex(_))
        ));
        assert!(matches!(
            GzipReader::new(blob_file(&blob), Vec::new(), 1, cache, 0),
            Err(Error::BadIndex(_))
        ));
    }

    #[test]
    fn checkpoints_with_leftover_bits_resume_exactly() {
        // Mixed data gives blocks that end mid-byte.
        let mut data = semi(1 << 20, 10);
        data.extend(random(300_000, 10));
        data.extend(semi(1 << 20, 11));
        let cps = check(&gz(&data, 6), &data, 16 << 10, 1 << 20);
        assert!(cps.iter().any(|c| c.bits != 0));
    }

    #[test]
    fn cache_respects_its_budget_and_shares_spans() {
        let data = semi(4 << 20, 13);
        let blob = gz(&data, 6);
        let (_, cps) = index(&blob, 256 << 10).unwrap();
        let budget = 1 << 20;
        let cache = Arc::new(SpanCache::new(budget));
        let readers: Vec<GzipReader> = (0..3)
            .map(|layer| {
                GzipReader::new(
                    blob_file(&blob),
                    cps.clone(),
                    data.len() as u64,
                    cache.clone(),
                    layer,
                )
                .unwrap()
            })
            .collect();
        std::thread::scope(|s| {
            for (t, r) in readers.iter().enumerate() {
                let data = &data;
                let cache = &cache;
                s.spawn(move || {
                    let mut rng = XorShift(t as u64 + 100);
                    let mut buf = vec![0u8; 100_000];
                    for _ in 0..100 {
                        let off = rng.below(data.len() as u64);
                        let n = r.read_at(off, &mut buf).unwrap();
                        assert!(buf[..n] == data[off as usize..off as usize + n]);
                        assert!(cache.used() <= budget);
                    }
                });
            }
        });
        assert!(cache.used() <= budget);
        assert!(cache.used() > 0);
    }

    #[test]
    fn sequential_reads_decompress_the_next_spans_ahead() {
        let mut x = 0x2545_f491_u32;
        let data: Vec<u8> = (0..2u32 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b'a' + (x % 16) as u8
            })
            .collect();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(&data).unwrap();
        let blob = e.finish().unwrap();
        let (_, cps) = index(&blob, 64 << 10).unwrap();
        assert!(cps.len() > 6);
        let r = reader(&blob, cps.clone(), data.len() as u64, 4 << 20);
        let mut buf = vec![0u8; 4096];
        // A read in span 0, then one in span 1: sequential.
        r.read_at(0, &mut buf).unwrap();
        let at = cps[1].out;
        r.read_at(at, &mut buf).unwrap();
        assert!(buf[..] == data[at as usize..at as usize + 4096]);
        let key = |span| SpanKey { layer: 7, span };
        let one_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) == 1;
        for span in 2..=1 + READ_AHEAD {
            let got = r
                .cache
                .get_or_load(key(span), || Err(io::Error::other("not read ahead")));
            if one_cpu {
                continue; // no prefetch thread on one CPU
            }
            let got = got.unwrap();
            let i = span as usize;
            let (start, end) = (cps[i].out as usize, cps[i + 1].out as usize);
            assert!(got[..] == data[start..end], "span {span}");
        }
        // The span after those was not asked for.
        let beyond = 2 + READ_AHEAD;
        let missing = r
            .cache
            .get_or_load(key(beyond), || Err(io::Error::other("absent")));
        assert_eq!(missing.unwrap_err().to_string(), "absent");
    }

    #[test]
    fn span_cache_evicts_least_recently_used() {
        let cache = SpanCache::new(300);
        let key = |span| SpanKey { layer: 1, span };
        let load = |n: usize| move || Ok(vec![n as u8; 100]);
        cache.get_or_load(key(0), load(0)).unwrap();
        cache.get_or_load(key(1), load(1)).unwrap();
        cache.get_or_load(key(2), load(2)).unwrap();
        assert_eq!(cache.used(), 300);
        // Touch 0, then add 3: 1 is the least recently used and goes.
        cache.get_or_load(key(0), || panic!("0 is cached")).unwrap();
        cache.get_or_load(key(3), load(3)).unwrap();
        assert_eq!(cache.used(), 300);
        cache.get_or_load(key(0), || panic!("0 is cached")).unwrap();
        cache.get_or_load(key(2), || panic!("2 is cached")).unwrap();
        let again = cache.get_or_load(key(1), load(9)).unwrap();
        assert_eq!(again[0], 9);
        // Too big to hold: returned, not cached; an error caches nothing.
        let big = cache.get_or_load(key(4), || Ok(vec![4; 301])).unwrap();
        assert_eq!(big.len(), 301);
        assert!(cache.used() <= 300);
        let err = cache
            .get_or_load(key(5), || Err(io::Error::other("boom")))
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(cache.get_or_load(key(5), load(5)).unwrap()[0], 5);
    }

    fn cli_gzip(tool: &str, args: &[&str], data: &[u8]) -> Option<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::fs::write(&path, data).unwrap();
        let out = match Command::new(tool).args(args).arg(&path).output() {
            Ok(out) => out,
            Err(e) => {
                eprintln!("skipping the {tool} case: cannot run {tool}: {e}");
                return None;
            }
        };
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out.stdout)
    }

    #[test]
    fn output_of_the_gzip_and_pigz_tools() {
        let mut data = semi(3 << 20, 14);
        data.extend(random(500_000, 14));
        data.extend(vec![0u8; 2 << 20]);
        for (tool, args) in [
            ("gzip", &["-c", "-6"][..]),
            ("gzip", &["-c", "-1"][..]),
            ("pigz", &["-c", "-p", "4"][..]),
            ("pigz", &["-c", "-i", "-b", "64"][..]),
        ] {
            if let Some(blob) = cli_gzip(tool, args, &data) {
                check(&blob, &data, 256 << 10, 8 << 20);
            }
        }
    }

    /// Throughput of the indexing pass against flate2's `MultiGzDecoder` (run with
    /// `cargo test --release --lib layer::gzip -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn throughput_against_flate2() {
        let data = semi(100 << 20, 15);
        let blob = gz(&data, 6);
        let mb = data.len() as f64 / 1e6;
        println!("{mb:.0} MB of data, {:.1} MB gzip", blob.len() as f64 / 1e6);
        let (mut best_ours, mut best_theirs) = (f64::MAX, f64::MAX);
        for _ in 0..7 {
            let t = std::time::Instant::now();
            let mut input = BufReader::with_capacity(256 << 10, &blob[..]);
            let cps = inflate_indexed(&mut input, &mut io::sink(), DEFAULT_SPAN).unwrap();
            assert_eq!(cps.len(), 96);
            best_ours = best_ours.min(t.elapsed().as_secs_f64());

            let t = std::time::Instant::now();
            let input = BufReader::with_capacity(256 << 10, &blob[..]);
            let mut d = flate2::bufread::MultiGzDecoder::new(input);
            let mut buf = vec![0u8; 256 << 10];
            let mut n = 0usize;
            loop {
                let k = d.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                n += k;
            }
            assert_eq!(n, data.len());
            best_theirs = best_theirs.min(t.elapsed().as_secs_f64());
        }
        println!(
            "best of 7: inflate_indexed {:.0} MB/s, flate2 MultiGzDecoder {:.0} MB/s",
            mb / best_ours,
            mb / best_theirs
        );
    }
}
