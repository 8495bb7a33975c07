//! Copying an entry's content out of a layer into a file: for copy-up and for unpack.
//!
//! Bytes that lie verbatim in a host file (a plain tar blob, a directory lower's file) go
//! through `copy_file_range`, so the kernel copies them (or shares their extents) without a
//! trip through this process; the source's holes are found with `SEEK_DATA`/`SEEK_HOLE` and
//! stay holes. Compressed layers are decompressed by several threads at once, each taking its
//! own stretch of the file: a gzip layer's checkpoints and a zstd layer's frames make the
//! stretches independent, so a large copy-up runs at the speed of all cores, not of one. All-zero
//! chunks are never written, and sparse entries copy only their stored segments, so the copy
//! is as sparse as its source.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use super::index::{Data, Entry};
use super::reader::{ReadAt, read_entry};

/// Bytes read and written at once by one thread.
const CHUNK: usize = 1 << 20;
/// The stretch of a file one thread takes at a time: several gzip spans, so that two threads
/// seldom need the same span.
const STRETCH: u64 = 8 << 20;
/// Most threads one copy uses.
const MAX_THREADS: usize = 4;
/// Largest single `copy_file_range` call.
const KERNEL_CHUNK: u64 = 64 << 20;

/// Copy the content of `entry` from `stream` into `out` (at the same offsets) and set `out`'s
/// length to the entry's size. Returns the bytes copied (holes not counted).
pub fn copy_entry(stream: &dyn ReadAt, entry: &Entry, out: &File) -> io::Result<u64> {
    let copied = match &entry.data {
        Data::None => 0,
        Data::Contiguous { offset } => match stream.verbatim(*offset) {
            Some(source) => {
                let (file, at) = source?;
                copy_verbatim(&file, at, out, entry.size)?
            }
            None => copy_decoded(stream, entry, &[(0, entry.size)], out)?,
        },
        Data::Sparse { map, .. } => copy_decoded(stream, entry, map, out)?,
    };
    out.set_len(entry.size)?;
    Ok(copied)
}

/// Copy `len` bytes at `at` in `source` to offset 0 on in `out`, skipping the source's holes.
fn copy_verbatim(source: &File, at: u64, out: &File, len: u64) -> io::Result<u64> {
    let end = at.saturating_add(len);
    let mut pos = at;
    let mut copied = 0u64;
    while pos < end {
        // The next data at or after `pos`, and the hole that ends it; a file system without
        // hole reporting says the whole file is data.
        let data = match rustix::fs::seek(source, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            break;
        }
        let hole = rustix::fs::seek(source, SeekFrom::Hole(data))
            .map_err(io::Error::from)?
            .min(end);
        copy_range(source, data, out, data - at, hole - data)?;
        copied += hole - data;
        pos = hole;
    }
    Ok(copied)
}

/// Copy `len` bytes from `source` at `from` to `out` at `to`, in the kernel where it can.
fn copy_range(source: &File, from: u64, out: &File, to: u64, len: u64) -> io::Result<()> {
    let (mut from, mut to) = (from, to);
    let end = from + len;
    while from < end {
        let want = usize::try_from((end - from).min(KERNEL_CHUNK)).unwrap_or(CHUNK);
        match rustix::fs::copy_file_range(source, Some(&mut from), out, Some(&mut to), want) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the source file is shorter than its entry",
                ));
            }
            Ok(_) => {}
            Err(Errno::INTR) => {}
            // Not across these file systems, or not at all: copy through memory.
            Err(Errno::XDEV | Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM) => {
                return copy_through_memory(source, from, out, to, end - from);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_through_memory(source: &File, from: u64, out: &File, to: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = source.read_at(&mut buf[..want], from + done)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the source file is shorter than its entry",
            ));
        }
        write_unless_zero(out, &buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Copy the `segments` (logical offset, length) of `entry` through `read_entry`, on up to
/// `MAX_THREADS` threads.
fn copy_decoded(
    stream: &dyn ReadAt,
    entry: &Entry,
    segments: &[(u64, u64)],
    out: &File,
) -> io::Result<u64> {
    // Every segment cut into stretches; the threads take them in order.
    let mut stretches = Vec::new();
    for &(start, len) in segments {
        let end = start.saturating_add(len).min(entry.size);
        let mut pos = start;
        while pos < end {
            let next = pos.saturating_add(STRETCH).min(end);
            stretches.push((pos, next));
            pos = next;
        }
    }
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_THREADS)
        .min(stretches.len());
    let next = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<io::Error>> = Mutex::new(None);
    let copied = AtomicU64::new(0);
    let work = || {
        let mut buf = vec![0u8; CHUNK];
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(start, end)) = usize::try_from(i).ok().and_then(|i| stretches.get(i)) else {
                break;
            };
            if let Err(e) = copy_stretch(stream, entry, out, start, end, &mut buf) {
                failed.store(true, Ordering::Relaxed);
                if let Ok(mut slot) = first_error.lock() {
                    slot.get_or_insert(e);
                }
                break;
            }
            copied.fetch_add(end - start, Ordering::Relaxed);
        }
    };
    if threads <= 1 {
        work();
    } else {
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(work);
            }
            work();
        });
    }
    match first_error.into_inner().ok().flatten() {
        Some(e) => Err(e),
        None => Ok(copied.into_inner()),
    }
}

fn copy_stretch(
    stream: &dyn ReadAt,
    entry: &Entry,
    out: &File,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        let want = usize::try_from((end - pos).min(buf.len() as u64)).unwrap_or(buf.len());
        let n = read_entry(stream, entry, pos, &mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer ends before the entry's data",
            ));
        }
        write_unless_zero(out, &buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Write `data` at `offset` unless it is all zeros (a hole reads the same).
fn write_unless_zero(out: &File, data: &[u8], offset: u64) -> io::Result<()> {
    if data.iter().any(|&b| b != 0) {
        out.write_all_at(data, offset)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::reader::tests::Mem;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    /// A plain file stream that offers its bytes for `copy_file_range`.
    struct OnDisk(Arc<File>);
    impl ReadAt for OnDisk {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read_at(buf, offset)
        }
        fn verbatim(&self, offset: u64) -> Option<io::Result<(Arc<File>, u64)>> {
            Some(Ok((self.0.clone(), offset)))
        }
    }

    fn new_file(path: &std::path::Path) -> File {
        File::options()
            .create_new(true)
            .read(true)
            .write(true)
            .open(path)
            .unwrap()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8 | 1).collect()
    }

    fn read_all(f: &File) -> Vec<u8> {
        let len = f.metadata().unwrap().len() as usize;
        let mut v = vec![0u8; len];
        f.read_exact_at(&mut v, 0).unwrap();
        v
    }

    #[test]
    fn decoded_copy_on_many_threads_is_exact() {
        // Several stretches, the last one short, at an odd offset in the stream.
        let len = 3 * STRETCH as usize + 12_345;
        let mut stream = vec![0xeeu8; 777];
        let body = pattern(len);
        stream.extend_from_slice(&body);
        stream.extend_from_slice(&[0xee; 100]);
        let entry = Entry {
            size: len as u64,
            data: Data::Contiguous { offset: 777 },
            ..Default::default()
        };
        let out = tempfile::tempfile().unwrap();
        assert_eq!(copy_entry(&Mem(stream), &entry, &out).unwrap(), len as u64);
        assert!(read_all(&out) == body);
    }

    #[test]
    fn sparse_entries_and_zero_chunks_stay_holes() {
        // Stored: 2 MiB of data at 0 and 1 MiB at 20 MiB; 4 MiB of zeros inside the first.
        let mut stored = pattern(3 << 20);
        stored[CHUNK..2 * CHUNK].fill(0);
        let entry = Entry {
            size: 32 << 20,
            data: Data::Sparse {
                offset: 0,
                map: vec![(0, 2 << 20), (20 << 20, 1 << 20)],
            },
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let out = new_file(&dir.path().join("f"));
        let copied = copy_entry(&Mem(stored.clone()), &entry, &out).unwrap();
        assert_eq!(copied, 3 << 20);
        let got = read_all(&out);
        assert_eq!(got.len(), 32 << 20);
        assert!(got[..2 << 20] == stored[..2 << 20]);
        assert!(got[20 << 20..21 << 20] == stored[2 << 20..]);
        assert!(got[2 << 20..20 << 20].iter().all(|&b| b == 0));
        assert!(got[21 << 20..].iter().all(|&b| b == 0));
        // Two of the 32 MiB hold data: far fewer blocks than the size.
        use std::os::unix::fs::MetadataExt;
        let blocks = out.metadata().unwrap().blocks() * 512;
        assert!(blocks <= 3 << 20, "{blocks} bytes allocated");
    }

    #[test]
    fn verbatim_copy_keeps_the_source_holes_and_its_region() {
        let dir = tempfile::tempdir().unwrap();
        // The source file: a header, then the entry (1 MiB data, 8 MiB hole, 1 MiB data), then
        // bytes that must not be copied.
        let src = new_file(&dir.path().join("src"));
        let head = 4096u64;
        let data = pattern(1 << 20);
        src.write_all_at(b"header", 0).unwrap();
        src.write_all_at(&data, head).unwrap();
        src.write_all_at(&data, head + (9 << 20)).unwrap();
        let size = 10u64 << 20;
        src.write_all_at(b"trailer", head + size).unwrap();
        let entry = Entry {
            size,
            data: Data::Contiguous { offset: head },
            ..Default::default()
        };
        let out = new_file(&dir.path().join("out"));
        copy_entry(&OnDisk(Arc::new(src)), &entry, &out).unwrap();
        let got = read_all(&out);
        assert_eq!(got.len() as u64, size);
        assert!(got[..1 << 20] == data[..]);
        assert!(got[9 << 20..] == data[..]);
        assert!(got[1 << 20..9 << 20].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_short_stream_is_an_error() {
        let entry = Entry {
            size: 5 << 20,
            data: Data::Contiguous { offset: 0 },
            ..Default::default()
        };
        let out = tempfile::tempfile().unwrap();
        let e = copy_entry(&Mem(pattern(1 << 20)), &entry, &out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
