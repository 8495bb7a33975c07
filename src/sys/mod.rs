//! System and foreign-library calls that need `unsafe`, each behind a safe type or function.
//!
//! The crate root denies `unsafe_code`; only the modules here allow it, and every `unsafe` block
//! in them carries a `// SAFETY:` comment saying why the call is sound. Callers elsewhere see
//! ordinary Rust types, slices and `Result`s.

pub mod malloc;
pub mod zlib;
