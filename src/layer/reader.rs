//! Reading entry content out of a layer's uncompressed stream, whatever its compression.
//!
//! A [`ReadAt`] gives positional reads into the uncompressed tar stream of one layer (a plain
//! tar read in place, or a compressed one through its checkpoints). [`read_entry`] maps a
//! read of a file's bytes onto that stream, expanding sparse files' holes as zeros.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::index::{Data, Entry};

/// Positional reads of a layer's uncompressed stream; shared by many threads.
pub trait ReadAt: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; fewer only at the end of the stream.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;

    /// The host file and offset where the stream's bytes from `offset` on lie as they are (a
    /// plain tar blob, a directory lower's file), so a copy can leave them to the kernel; `None`
    /// when they exist only decompressed.
    fn verbatim(&self, _offset: u64) -> Option<io::Result<(Arc<File>, u64)>> {
        None
    }
}

/// An uncompressed tar blob, read in place.
pub struct Plain(pub Arc<File>);

impl ReadAt for Plain {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn verbatim(&self, offset: u64) -> Option<io::Result<(Arc<File>, u64)>> {
        Some(Ok((self.0.clone(), offset)))
    }
}

/// Fill `buf` with the bytes of `entry` from `offset` on; returns how many (fewer only at the
/// end of the file). A stream shorter than the index promises is an error, not zeros.
pub fn read_entry(
    stream: &dyn ReadAt,
    entry: &Entry,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    if offset >= entry.size {
        return Ok(0);
    }
    let len = usize::try_from((entry.size - offset).min(buf.len() as u64)).unwrap_or(buf.len());
    let buf = &mut buf[..len];
    match &entry.data {
        Data::None => {
            buf.fill(0);
            Ok(len)
        }
        Data::Contiguous { offset: start } => {
            read_exact_at(stream, start + offset, buf)?;
            Ok(len)
        }
        Data::Sparse { offset: start, map } => {
            buf.fill(0);
            let mut stored = 0u64; // position of the current segment in the stored data
            for &(seg_off, seg_len) in map {
                let seg_end = seg_off.saturating_add(seg_len);
                let want_end = offset + len as u64;
                if seg_end > offset && seg_off < want_end {
                    let from = seg_off.max(offset);
                    let to = seg_end.min(want_end);
                    let dst = usize::try_from(from - offset).unwrap_or(0);
                    let n = usize::try_from(to - from).unwrap_or(0);
                    let src = start + stored + (from - seg_off);
                    if let Some(slice) = buf.get_mut(dst..dst + n) {
                        read_exact_at(stream, src, slice)?;
                    }
                }
                stored = stored.saturating_add(seg_len);
            }
            Ok(len)
        }
    }
}

fn read_exact_at(stream: &dyn ReadAt, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = stream.read_at(offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer stream ends before the entry's data",
            ));
        }
        done += n;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stream in memory (for the tests of what reads streams).
    pub(crate) struct Mem(pub Vec<u8>);
    impl ReadAt for Mem {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            let start = (offset as usize).min(self.0.len());
            let n = buf.len().min(self.0.len() - start);
            buf[..n].copy_from_slice(&self.0[start..start + n]);
            Ok(n)
        }
    }

    #[test]
    fn sparse_reads_zeros_in_holes() {
        // Stored: "AAAA" then "BB"; logical: 4 at 2..6 and 2 at 10..12, size 16.
        let stream = Mem(b"xxAAAABByy".to_vec());
        let entry = Entry {
            size: 16,
            data: Data::Sparse {
                offset: 2,
                map: vec![(2, 4), (10, 2)],
            },
            ..Default::default()
        };
        let mut whole = vec![9u8; 20];
        assert_eq!(read_entry(&stream, &entry, 0, &mut whole).unwrap(), 16);
        assert_eq!(&whole[..16], b"\0\0AAAA\0\0\0\0BB\0\0\0\0");
        for start in 0..16u64 {
            for len in 0..18usize {
                let mut b = vec![7u8; len];
                let n = read_entry(&stream, &entry, start, &mut b).unwrap();
                let want_end = (start as usize + len).min(16);
                assert_eq!(&b[..n], &whole[start as usize..want_end], "{start}+{len}");
            }
        }
    }

    #[test]
    fn contiguous_and_short_stream() {
        let stream = Mem(b"0123456789".to_vec());
        let mut entry = Entry {
            size: 4,
            data: Data::Contiguous { offset: 3 },
            ..Default::default()
        };
        let mut b = [0u8; 10];
        assert_eq!(read_entry(&stream, &entry, 1, &mut b).unwrap(), 3);
        assert_eq!(&b[..3], b"456");
        assert_eq!(read_entry(&stream, &entry, 4, &mut b).unwrap(), 0);
        entry.size = 100;
        assert!(read_entry(&stream, &entry, 0, &mut b).is_err());
    }
}
