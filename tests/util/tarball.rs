//! Tar archives with full control over every header, for layers no well-behaved archiver would
//! write: any entry type, mode bits, ids and mtimes out of the ustar range, pax records
//! (`path`, `linkpath`, `uid`, `mtime`, `SCHILY.xattr.*`), GNU long names and base-256 numbers,
//! raw byte names, `../` and absolute paths, whiteouts.
//!
//! The header is serialised here byte by byte rather than with the `tar` crate, whose builder
//! (rightly) refuses most of what these tests need to write.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use super::image::{Blob, Compression, Flavor, Layer, MTIME};
use super::sha256_digest;

const BLOCK: usize = 512;
/// Largest value of an 8-byte octal field (7 digits and a NUL).
const OCTAL_8_MAX: u64 = 0o7_777_777;
/// Largest value of a 12-byte octal field (11 digits and a NUL).
const OCTAL_12_MAX: u64 = 0o77_777_777_777;

/// What an entry is, with what its type needs.
#[derive(Clone, Debug)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Fifo,
    Char(u32, u32),
    Block(u32, u32),
}

/// How the entry spells what does not fit a plain ustar header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// ustar only (long paths split into prefix and name); panics if something does not fit.
    Ustar,
    /// A pax extended header (`x`) before the entry; the default.
    Pax,
    /// GNU: `././@LongLink` entries (`L`, `K`) and base-256 numbers; no xattrs.
    Gnu,
}

/// One tar entry, described field by field.
#[derive(Clone, Debug)]
pub struct TarEntry {
    pub path: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch (may be negative) and nanoseconds (pax only).
    pub mtime: (i64, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub dialect: Dialect,
    /// Extra pax records, written verbatim (after the ones the fields need).
    pub pax: Vec<(String, Vec<u8>)>,
    /// Overrides the name written in the ustar header itself (for pax-versus-ustar tricks).
    pub header_name: Option<Vec<u8>>,
}

impl TarEntry {
    fn new(path: impl AsRef<[u8]>, kind: Kind, mode: u32) -> TarEntry {
        TarEntry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: (MTIME as i64, 0),
            xattrs: Vec::new(),
            dialect: Dialect::Pax,
            pax: Vec::new(),
            header_name: None,
        }
    }

    pub fn file(path: impl AsRef<[u8]>, data: impl Into<Vec<u8>>) -> TarEntry {
        TarEntry::new(path, Kind::File(data.into()), 0o644)
    }

    pub fn dir(path: impl AsRef<[u8]>) -> TarEntry {
        TarEntry::new(path, Kind::Dir, 0o755)
    }

    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> TarEntry {
        TarEntry::new(path, Kind::Symlink(target.as_ref().to_vec()), 0o777)
    }

    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> TarEntry {
        TarEntry::new(path, Kind::Hardlink(target.as_ref().to_vec()), 0o644)
    }

    pub fn fifo(path: impl AsRef<[u8]>) -> TarEntry {
        TarEntry::new(path, Kind::Fifo, 0o644)
    }

    pub fn char_device(path: impl AsRef<[u8]>, major: u32, minor: u32) -> TarEntry {
        TarEntry::new(path, Kind::Char(major, minor), 0o666)
    }

    pub fn block_device(path: impl AsRef<[u8]>, major: u32, minor: u32) -> TarEntry {
        TarEntry::new(path, Kind::Block(major, minor), 0o660)
    }

    /// `DIR/.wh.NAME`: deletes `DIR/NAME` of lower layers.
    pub fn whiteout(path: &str) -> TarEntry {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (format!("{d}/"), n),
            None => (String::new(), path),
        };
        TarEntry::file(format!("{dir}.wh.{name}"), Vec::new())
    }

    /// `DIR/.wh..wh..opq`: hides everything lower layers had in `DIR`.
    pub fn opaque(dir: &str) -> TarEntry {
        TarEntry::file(format!("{dir}/.wh..wh..opq"), Vec::new())
    }

    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, secs: i64) -> Self {
        self.mtime = (secs, 0);
        self
    }

    pub fn mtime_ns(mut self, secs: i64, nanos: u32) -> Self {
        self.mtime = (secs, nanos);
        self
    }

    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    pub fn pax_record(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        self.pax.push((key.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn header_name(mut self, name: impl AsRef<[u8]>) -> Self {
        self.header_name = Some(name.as_ref().to_vec());
        self
    }

    fn typeflag(&self) -> u8 {
        match self.kind {
            Kind::File(_) => b'0',
            Kind::Hardlink(_) => b'1',
            Kind::Symlink(_) => b'2',
            Kind::Char(..) => b'3',
            Kind::Block(..) => b'4',
            Kind::Dir => b'5',
            Kind::Fifo => b'6',
        }
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            Kind::File(data) => data,
            _ => &[],
        }
    }

    fn link(&self) -> &[u8] {
        match &self.kind {
            Kind::Symlink(t) | Kind::Hardlink(t) => t,
            _ => &[],
        }
    }
}

/// A tar archive of `entries`, ending with the two zero blocks.
pub fn tar_raw(entries: &[TarEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        write_entry(&mut out, entry);
    }
    out.extend_from_slice(&[0u8; 2 * BLOCK]);
    out
}

/// A layer made of `entries`.
pub fn raw_layer(entries: &[TarEntry], compression: Compression) -> Layer {
    Layer::from_tar(tar_raw(entries), compression, Flavor::Oci)
}

/// A gzip layer compressed by `pigz` (or `gzip`) rather than in-process: the test profile
/// builds the Rust compressor without optimisation, far too slow for hundreds of MiB.
pub fn gzip_layer_fast(tar: Vec<u8>) -> Layer {
    let diff_id = sha256_digest(&tar);
    let compressed = pipe_through(&["pigz", "gzip"], &["-1", "-c", "-n"], &tar);
    Layer {
        blob: Blob::new(Flavor::Oci.layer_type(Compression::Gzip), compressed),
        tar,
        diff_id,
        compression: Compression::Gzip,
    }
}

/// Runs the first of `programs` found with `args`, feeding `input` and returning its stdout.
fn pipe_through(programs: &[&str], args: &[&str], input: &[u8]) -> Vec<u8> {
    for program in programs {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else { continue };
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{program} {args:?} failed");
        return out.stdout;
    }
    panic!("none of {programs:?} is installed (run .ci/run's install step)");
}

/// A tar of `dir`'s contents made by GNU tar with `extra` flags (e.g. `--sparse`), with fixed
/// owner and mtime and sorted names.
pub fn gnu_tar_of(dir: &Path, extra: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .args([
            "--create",
            "--file=-",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--sort=name",
            "--blocking-factor=1",
        ])
        .arg(format!("--mtime=@{MTIME}"))
        .args(extra)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .output()
        .expect("run GNU tar");
    assert!(
        out.status.success(),
        "tar failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn write_entry(out: &mut Vec<u8>, e: &TarEntry) {
    let data = e.data();
    let size = data.len() as u64;
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    let mut name = e.header_name.clone().unwrap_or_else(|| e.path.clone());
    let mut prefix = Vec::new();
    let mut link = e.link().to_vec();

    // Paths: ustar split, or an extension for the dialect.
    if e.header_name.is_none() && name.len() > 100 {
        match split_ustar(&name) {
            Some((p, n)) if e.dialect == Dialect::Ustar => {
                prefix = p;
                name = n;
            }
            _ => match e.dialect {
                Dialect::Ustar => panic!("{:?} does not fit ustar", lossy(&e.path)),
                Dialect::Pax => {
                    pax.push(("path".into(), e.path.clone()));
                    name = e.path[..100].to_vec();
                }
                Dialect::Gnu => {
                    write_long_link(out, b'L', &e.path);
                    name = e.path[..100].to_vec();
                }
            },
        }
    }
    if link.len() > 100 {
        match e.dialect {
            Dialect::Ustar => panic!("link of {:?} does not fit ustar", lossy(&e.path)),
            Dialect::Pax => pax.push(("linkpath".into(), link.clone())),
            Dialect::Gnu => write_long_link(out, b'K', &link),
        }
        link.truncate(100);
    }

    // Numbers: octal, or pax records / GNU base-256 when they do not fit.
    let needs_pax_time = e.mtime.0 < 0 || e.mtime.0 as u64 > OCTAL_12_MAX || e.mtime.1 != 0;
    if e.dialect == Dialect::Pax {
        if e.uid > OCTAL_8_MAX {
            pax.push(("uid".into(), e.uid.to_string().into_bytes()));
        }
        if e.gid > OCTAL_8_MAX {
            pax.push(("gid".into(), e.gid.to_string().into_bytes()));
        }
        if needs_pax_time {
            pax.push(("mtime".into(), pax_time(e.mtime).into_bytes()));
        }
    } else if e.dialect == Dialect::Ustar {
        assert!(
            e.uid <= OCTAL_8_MAX && e.gid <= OCTAL_8_MAX && !needs_pax_time,
            "{:?}: ids or mtime do not fit ustar",
            lossy(&e.path)
        );
    } else {
        assert_eq!(e.mtime.1, 0, "GNU headers have no sub-second mtimes");
    }
    for (key, value) in &e.xattrs {
        assert_ne!(e.dialect, Dialect::Gnu, "xattrs need pax");
        pax.push((format!("SCHILY.xattr.{key}"), value.clone()));
    }
    pax.extend(e.pax.iter().cloned());
    if !pax.is_empty() {
        let records = pax_records(&pax);
        let mut h = [0u8; BLOCK];
        let mut pax_name = b"PaxHeaders.0/".to_vec();
        pax_name.extend(name.iter().rev().take(80).rev());
        put(&mut h, 0, 100, &pax_name);
        octal(&mut h, 100, 8, 0o644);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, records.len() as u64);
        octal(&mut h, 136, 12, MTIME);
        h[156] = b'x';
        finish_header(&mut h, Dialect::Pax);
        out.extend_from_slice(&h);
        push_padded(out, &records);
    }

    let mut h = [0u8; BLOCK];
    put(&mut h, 0, 100, &name);
    octal(&mut h, 100, 8, u64::from(e.mode));
    number(&mut h, 108, 8, e.uid, e.dialect);
    number(&mut h, 116, 8, e.gid, e.dialect);
    octal(&mut h, 124, 12, size);
    if e.dialect == Dialect::Gnu && (e.mtime.0 < 0 || e.mtime.0 as u64 > OCTAL_12_MAX) {
        base256(&mut h, 136, 12, e.mtime.0);
    } else {
        octal(
            &mut h,
            136,
            12,
            e.mtime.0.clamp(0, OCTAL_12_MAX as i64) as u64,
        );
    }
    h[156] = e.typeflag();
    put(&mut h, 157, 100, &link);
    put(&mut h, 265, 32, if e.uid == 0 { b"root" } else { b"" });
    put(&mut h, 297, 32, if e.gid == 0 { b"root" } else { b"" });
    if let Kind::Char(major, minor) | Kind::Block(major, minor) = e.kind {
        octal(&mut h, 329, 8, u64::from(major));
        octal(&mut h, 337, 8, u64::from(minor));
    }
    put(&mut h, 345, 155, &prefix);
    finish_header(&mut h, e.dialect);
    out.extend_from_slice(&h);
    push_padded(out, data);
}

/// A GNU `././@LongLink` entry of type `flag` (`L` for the path, `K` for the link target).
fn write_long_link(out: &mut Vec<u8>, flag: u8, value: &[u8]) {
    let mut h = [0u8; BLOCK];
    put(&mut h, 0, 100, b"././@LongLink");
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, value.len() as u64 + 1);
    octal(&mut h, 136, 12, 0);
    h[156] = flag;
    finish_header(&mut h, Dialect::Gnu);
    out.extend_from_slice(&h);
    let mut v = value.to_vec();
    v.push(0);
    push_padded(out, &v);
}

/// `prefix/name` split of a ustar path, if one exists.
fn split_ustar(path: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if path.len() > 256 {
        return None;
    }
    (0..path.len())
        .filter(|&i| path[i] == b'/')
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100 && i + 1 < path.len())
        .map(|i| (path[..i].to_vec(), path[i + 1..].to_vec()))
}

/// pax `mtime`: seconds with an optional fraction; negative times count down from the epoch.
fn pax_time((secs, nanos): (i64, u32)) -> String {
    if nanos == 0 {
        return secs.to_string();
    }
    if secs >= 0 {
        format!("{secs}.{nanos:09}")
    } else {
        // secs + nanos/1e9, written as a negative decimal.
        let total = -(i128::from(secs) * 1_000_000_000 + i128::from(nanos));
        format!("-{}.{:09}", total / 1_000_000_000, total % 1_000_000_000)
    }
}

/// `LEN KEY=VALUE\n` records, where LEN counts the whole record including its own digits.
fn pax_records(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let body = key.len() + value.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

fn put(h: &mut [u8; BLOCK], at: usize, len: usize, value: &[u8]) {
    let n = value.len().min(len);
    h[at..at + n].copy_from_slice(&value[..n]);
}

fn octal(h: &mut [u8; BLOCK], at: usize, len: usize, value: u64) {
    let s = format!("{value:0width$o}", width = len - 1);
    assert!(s.len() < len, "{value} does not fit {len} octal bytes");
    put(h, at, len, s.as_bytes());
}

fn number(h: &mut [u8; BLOCK], at: usize, len: usize, value: u64, dialect: Dialect) {
    let max = if len == 8 { OCTAL_8_MAX } else { OCTAL_12_MAX };
    if value <= max {
        octal(h, at, len, value);
    } else if dialect == Dialect::Gnu {
        base256(h, at, len, value as i64);
    } else {
        // The pax record carries the value; the header holds a placeholder.
        octal(h, at, len, 0);
    }
}

/// GNU base-256: the high bit of the first byte set, the value big-endian two's complement.
fn base256(h: &mut [u8; BLOCK], at: usize, len: usize, value: i64) {
    let bytes = value.to_be_bytes();
    let fill = if value < 0 { 0xff } else { 0 };
    for i in 0..len {
        h[at + i] = if i < len - 8 {
            fill
        } else {
            bytes[i - (len - 8)]
        };
    }
    h[at] |= 0x80;
}

fn finish_header(h: &mut [u8; BLOCK], dialect: Dialect) {
    if dialect == Dialect::Gnu {
        put(h, 257, 8, b"ustar  \0");
    } else {
        put(h, 257, 6, b"ustar\0");
        put(h, 263, 2, b"00");
    }
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

fn push_padded(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(data);
    let rem = data.len() % BLOCK;
    if rem != 0 {
        out.resize(out.len() + BLOCK - rem, 0);
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
