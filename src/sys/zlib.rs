//! A safe wrapper over zlib's `inflate` for what flate2 does not expose.
//!
//! Random access into gzip (zlib's `zran.c` method, see DESIGN.md) needs four things from the
//! inflater that flate2's API hides: stopping at every deflate block boundary (`Z_BLOCK`),
//! learning at such a boundary how many input bits are taken but unused (`data_type`), priming
//! a fresh raw inflater with those bits (`inflatePrime`), and giving it the 32 KiB of earlier
//! output as its window (`inflateSetDictionary`). The implementation is zlib-rs, the same code
//! flate2 uses here, reached through its zlib-compatible C API (`libz-rs-sys`).
//!
//! Invariants: an [`Inflater`] owns one boxed `z_stream` that is initialised in [`Inflater::new`]
//! and ended in `Drop`; it never moves (zlib's state may point back at it), and its input and
//! output pointers are set from Rust slices only for the duration of one `inflate` call and
//! cleared afterwards, so nothing dangles between calls.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_int};

use libz_rs_sys as z;

/// deflate's largest window, as a base-2 logarithm (32 KiB).
const MAX_WBITS: c_int = 15;
/// zlib adds 16 to the window bits to expect (only) a gzip header and trailer.
const GZIP_WRAPPER: c_int = 16;
/// `data_type` flag: inflate stopped at a block boundary (or just after the header).
const AT_BLOCK_BOUNDARY: c_int = 128;
/// `data_type` flag: the block being decoded, or just finished, is the last of the stream.
const IN_LAST_BLOCK: c_int = 64;
/// `data_type` bits that count input bits held but not yet used (zlib-rs buffers up to 63).
const UNUSED_BITS_MASK: c_int = 63;

/// What framing the inflater expects around the deflate data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Bare deflate data, as when resuming mid-stream at a checkpoint.
    Raw,
    /// A gzip member: header, deflate data, and a CRC-32 and size trailer that are verified.
    Gzip,
}

impl Format {
    fn window_bits(self) -> c_int {
        match self {
            Format::Raw => -MAX_WBITS,
            Format::Gzip => GZIP_WRAPPER + MAX_WBITS,
        }
    }
}

/// How far one call may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// As far as input and output allow.
    None,
    /// Also stop after the gzip header and at the end of each deflate block (`Z_BLOCK`).
    Block,
}

/// How a call ended, when it did not fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Input consumed or output produced (or stopped at a block boundary); call again.
    Ok,
    /// The end of the deflate stream (and, for [`Format::Gzip`], a verified trailer).
    StreamEnd,
    /// Nothing consumed or produced: more input is needed, or an empty block was decoded from
    /// bits already held. Not an error by itself.
    NoProgress,
}

/// The result of one [`Inflater::inflate`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Bytes taken from the front of the input slice.
    pub consumed: usize,
    /// Bytes written to the front of the output slice.
    pub produced: usize,
    pub status: Status,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The compressed data is invalid (zlib's own message, e.g. "incorrect data check").
    #[error("{0}")]
    Data(String),
    #[error("the deflate stream needs a preset dictionary, which gzip never uses")]
    NeedDictionary,
    #[error("out of memory in zlib")]
    Memory,
    #[error("zlib's {call} failed with code {code}")]
    Call { call: &'static str, code: c_int },
}

/// One inflate stream.
pub struct Inflater {
    stream: Box<z::z_stream>,
}

impl Inflater {
    pub fn new(format: Format) -> Result<Self, Error> {
        // `Default` installs zlib-rs' Rust allocator, which `inflateInit2_` requires.
        let mut stream = Box::new(z::z_stream::default());
        let size = c_int::try_from(size_of::<z::z_stream>()).map_err(|_| Error::Call {
            call: "inflateInit2_",
            code: z::Z_VERSION_ERROR,
        })?;
        // SAFETY: `stream` is a valid, boxed (so never moving) z_stream with its allocator
        // fields set; the version string is the library's own NUL-terminated constant and
        // `size` is the size of the struct the library was built with.
        let code =
            unsafe { z::inflateInit2_(&mut *stream, format.window_bits(), z::zlibVersion(), size) };
        match code {
            z::Z_OK => Ok(Inflater { stream }),
            z::Z_MEM_ERROR => Err(Error::Memory),
            code => Err(Error::Call {
                call: "inflateInit2_",
                code,
            }),
        }
    }

    /// Start over on a new stream of the given format, keeping the allocations.
    pub fn reset(&mut self, format: Format) -> Result<(), Error> {
        // SAFETY: the stream was initialised by `inflateInit2_` in `new` and not ended.
        let code = unsafe { z::inflateReset2(&mut *self.stream, format.window_bits()) };
        check("inflateReset2", code)
    }

    /// Insert the low `bits` bits (at most 16) of `value` into the input bit buffer, as the
    /// unused high bits of the byte before a checkpoint. Only valid before the first `inflate`
    /// after `new` or `reset` with [`Format::Raw`].
    pub fn prime(&mut self, bits: u8, value: u16) -> Result<(), Error> {
        // SAFETY: the stream was initialised by `inflateInit2_` in `new` and not ended.
        let code =
            unsafe { z::inflatePrime(&mut *self.stream, c_int::from(bits), c_int::from(value)) };
        check("inflatePrime", code)
    }

    /// Give a raw inflater the output that preceded its starting point (up to 32 KiB).
    pub fn set_window(&mut self, window: &[u8]) -> Result<(), Error> {
        let len = u32::try_from(window.len()).map_err(|_| Error::Call {
            call: "inflateSetDictionary",
            code: z::Z_STREAM_ERROR,
        })?;
        // SAFETY: the stream was initialised by `inflateInit2_` and not ended; `window` is a
        // live slice of `len` bytes that zlib copies into its own window before returning.
        let code = unsafe { z::inflateSetDictionary(&mut *self.stream, window.as_ptr(), len) };
        check("inflateSetDictionary", code)
    }

    /// Decompress from `input` into `output`. With a zero-length `output` zlib still consumes
    /// input that yields no output: the end of a block, a gzip trailer and header.
    pub fn inflate(
        &mut self,
        input: &[u8],
        output: &mut [u8],
        flush: Flush,
    ) -> Result<Step, Error> {
        // zlib counts in 32 bits; a longer slice is simply used in part.
        let avail_in = u32::try_from(input.len()).unwrap_or(u32::MAX);
        let avail_out = u32::try_from(output.len()).unwrap_or(u32::MAX);
        self.stream.next_in = input.as_ptr();
        self.stream.avail_in = avail_in;
        self.stream.next_out = output.as_mut_ptr();
        self.stream.avail_out = avail_out;
        let flush = match flush {
            Flush::None => z::Z_NO_FLUSH,
            Flush::Block => z::Z_BLOCK,
        };
        // SAFETY: the stream was initialised and not ended; `next_in`/`avail_in` describe
        // (a prefix of) the live slice `input` and `next_out`/`avail_out` (a prefix of) the
        // live, writable slice `output`, both borrowed for the duration of this call only.
        let code = unsafe { z::inflate(&mut *self.stream, flush) };
        let consumed = (avail_in - self.stream.avail_in.min(avail_in)) as usize;
        let produced = (avail_out - self.stream.avail_out.min(avail_out)) as usize;
        self.stream.next_in = std::ptr::null();
        self.stream.avail_in = 0;
        self.stream.next_out = std::ptr::null_mut();
        self.stream.avail_out = 0;
        let status = match code {
            z::Z_OK => Status::Ok,
            z::Z_STREAM_END => Status::StreamEnd,
            z::Z_BUF_ERROR => Status::NoProgress,
            z::Z_NEED_DICT => return Err(Error::NeedDictionary),
            z::Z_DATA_ERROR => return Err(Error::Data(self.message())),
            z::Z_MEM_ERROR => return Err(Error::Memory),
            code => {
                return Err(Error::Call {
                    call: "inflate",
                    code,
                });
            }
        };
        Ok(Step {
            consumed,
            produced,
            status,
        })
    }

    /// After a call with [`Flush::Block`] that stopped between two blocks of a stream that has
    /// more blocks to come (not after its last block), the number of input bits already taken
    /// from the input but not yet used. `None` anywhere else.
    pub fn block_boundary(&self) -> Option<u32> {
        let data_type = self.stream.data_type;
        if data_type & AT_BLOCK_BOUNDARY != 0 && data_type & IN_LAST_BLOCK == 0 {
            u32::try_from(data_type & UNUSED_BITS_MASK).ok()
        } else {
            None
        }
    }

    fn message(&self) -> String {
        if self.stream.msg.is_null() {
            return "invalid deflate data".to_owned();
        }
        // SAFETY: zlib sets `msg` to null (checked above) or to one of its static,
        // NUL-terminated message strings, which live for the whole program.
        let msg = unsafe { CStr::from_ptr(self.stream.msg) };
        msg.to_string_lossy().into_owned()
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by `inflateInit2_` in `new` and is ended exactly
        // once, here; it is not used afterwards.
        unsafe {
            z::inflateEnd(&mut *self.stream);
        }
    }
}

fn check(call: &'static str, code: c_int) -> Result<(), Error> {
    match code {
        z::Z_OK => Ok(()),
        z::Z_MEM_ERROR => Err(Error::Memory),
        z::Z_DATA_ERROR => Err(Error::Data(format!("{call} rejected its input"))),
        code => Err(Error::Call { call, code }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_a_gzip_member_and_reports_its_end() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let blob = gzip(&data);
        let mut z = Inflater::new(Format::Gzip).unwrap();
        let mut out = vec![0u8; data.len() + 10];
        let step = z.inflate(&blob, &mut out, Flush::None).unwrap();
        assert_eq!(step.status, Status::StreamEnd);
        assert_eq!(step.consumed, blob.len());
        assert_eq!(&out[..step.produced], &data[..]);
    }

    #[test]
    fn a_wrong_crc_is_a_data_error() {
        let mut blob = gzip(b"hello, world");
        let n = blob.len();
        blob[n - 8] ^= 1;
        let mut z = Inflater::new(Format::Gzip).unwrap();
        let mut out = vec![0u8; 100];
        let err = z.inflate(&blob, &mut out, Flush::None).unwrap_err();
        assert!(matches!(err, Error::Data(_)), "{err}");
    }

    #[test]
    fn block_flush_stops_after_the_header() {
        let blob = gzip(b"some bytes");
        let mut z = Inflater::new(Format::Gzip).unwrap();
        let mut out = vec![0u8; 100];
        let step = z.inflate(&blob, &mut out, Flush::Block).unwrap();
        assert_eq!(step.status, Status::Ok);
        assert_eq!(step.produced, 0);
        assert_eq!(step.consumed, 10);
        assert_eq!(z.block_boundary(), Some(0));
    }
}
