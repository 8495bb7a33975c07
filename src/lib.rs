//! layerfs: use a container image as a filesystem without Docker, root or kernel OverlayFS.
//!
//! The crate is organised by responsibility (see DESIGN.md): [`mod@reference`] parses image names,
//! [`registry`] speaks the distribution API, [`store`] keeps blobs in an OCI image layout,
//! [`layer`] reads layer streams, [`pull`] and [`archive`] bring images into the store, and
//! [`cli`] is the command line on top.

#![deny(unsafe_code)]

pub mod archive;
pub mod cli;
pub mod commit;
pub mod digest;
pub mod fs;
pub mod image;
pub mod layer;
pub mod mount;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod store;
pub mod sys;
pub mod tree;
pub mod unpack;
