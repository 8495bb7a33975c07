//! The merged tree: layer indexes combined by the OCI image-spec rules into one directory tree
//! of nodes with stable ids (the mount's inode numbers).
//!
//! Pure data, no I/O. Layers apply bottom to top. Within a layer, `.wh..wh..opq` markers apply
//! first (they hide everything lower layers had in their directory), then `.wh.NAME` whiteouts
//! (they delete NAME from lower layers), then the entries in tar order, the last entry for a path
//! winning. An entry replaces what lower layers had at its path, whatever the type; a
//! directory over a directory keeps the lower children (union) and takes the upper metadata.
//! Missing parent directories exist implicitly. Hard links share their target's node, so the
//! link count is the number of names a node has.
//!
//! The tree is immutable once built: FUSE threads share it without locks.

use std::collections::BTreeMap;

use crate::layer::index::{Data, Entry, Kind};

/// A node's id: index into the arena. The mount's inode number is `id + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub const ROOT: NodeId = NodeId(0);

    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Where a node's metadata, xattrs and content come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source {
    pub layer: u32,
    pub entry: u32,
}

/// What a node is, and what only that kind of node has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Children sorted by name (their names are in the tree's name arena).
    Dir(Box<[Child]>),
    File,
    Symlink,
    Char,
    Block,
    Fifo,
}

/// A directory's child: its name (a range of the tree's name arena) and node. Twelve bytes and
/// no allocation of its own, where a boxed name cost about fifty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    name_start: u32,
    name_len: u32,
    pub id: NodeId,
}

/// One file, directory, link or device in the merged view.
#[derive(Clone, Debug)]
pub struct Node {
    pub parent: NodeId,
    pub body: Body,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub mtime_nsec: u32,
    pub size: u64,
    /// Bytes the content occupies (sparse files: less than `size`).
    pub stored: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub nlink: u32,
    /// `None` for directories that exist only implicitly.
    pub source: Option<Source>,
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self.body, Body::Dir(_))
    }

    fn child_list(&self) -> &[Child] {
        match &self.body {
            Body::Dir(c) => c,
            _ => &[],
        }
    }
}

/// Why a tree could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("the image has more than {0} entries")]
    TooManyNodes(u32),
    #[error("the image's file names add up to more than 4 GiB")]
    TooManyNames,
}

/// Most nodes a tree holds (inode numbers are `u32` ids + 1).
const MAX_NODES: u32 = u32::MAX - 2;
/// Mode of a directory that no layer lists but that holds listed entries.
const IMPLICIT_DIR_MODE: u32 = 0o755;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// The merged tree.
#[derive(Debug)]
pub struct Tree {
    nodes: Vec<Node>,
    /// Every directory entry's name, one after another.
    names: Vec<u8>,
}

/// A directory during the build: children by name for cheap insert and delete.
type Building = BTreeMap<Box<[u8]>, NodeId>;

struct Builder {
    nodes: Vec<Node>,
    dirs: Vec<Option<Building>>,
}

impl Tree {
    /// Merge `layers`, bottom first.
    pub fn build(layers: &[&[Entry]]) -> Result<Tree, Error> {
        let mut b = Builder {
            nodes: Vec::new(),
            dirs: Vec::new(),
        };
        b.push(implicit_dir(NodeId::ROOT))?;
        for (l, entries) in layers.iter().enumerate() {
            b.apply_layer(l as u32, entries)?;
        }
        b.finish()
    }

    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.index())
    }

    pub fn root(&self) -> &Node {
        &self.nodes[0]
    }

    /// Number of nodes in the arena (reachable or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let children = self.node(dir)?.child_list();
        children
            .binary_search_by(|c| self.name(c).cmp(name))
            .ok()
            .map(|i| children[i].id)
    }

    /// The children of `dir` (none if it is not a directory), sorted by name.
    pub fn children(
        &self,
        dir: NodeId,
    ) -> impl ExactSizeIterator<Item = (&[u8], NodeId)> + Clone + '_ {
        self.node(dir)
            .map_or(&[][..], Node::child_list)
            .iter()
            .map(|c| (self.name(c), c.id))
    }

    fn name(&self, c: &Child) -> &[u8] {
        let start = c.name_start as usize;
        self.names
            .get(start..start + c.name_len as usize)
            .unwrap_or_default()
    }

    /// A path of `id` in the merged view (for messages; a hard link gives one of its names).
    pub fn path(&self, id: NodeId) -> Vec<u8> {
        let mut parts = Vec::new();
        let mut cur = id;
        while cur != NodeId::ROOT && parts.len() < self.nodes.len() {
            let Some(node) = self.node(cur) else { break };
            let parent = if node.is_dir() {
                node.parent
            } else {
                // A file's parent is not recorded: find the directory that lists it.
                match self.lister(cur) {
                    Some(p) => p,
                    None => break,
                }
            };
            match self.children(parent).find(|&(_, c)| c == cur) {
                Some((name, _)) => parts.push(name),
                None => break,
            }
            cur = parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    fn lister(&self, id: NodeId) -> Option<NodeId> {
        (0..self.nodes.len())
            .map(|i| NodeId(i as u32))
            .find(|&d| self.children(d).any(|(_, c)| c == id))
    }

    /// Resolve a slash-separated path from the root, without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Option<NodeId> {
        path.split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .try_fold(NodeId::ROOT, |id, c| self.lookup(id, c))
    }

    /// Every reachable (path, node) in depth-first order, parents before children; a hard-linked
    /// node appears once per name.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = vec![(Vec::new(), NodeId::ROOT)];
        let mut i = 0;
        while i < out.len() {
            let (path, id) = out[i].clone();
            for (name, child) in self.children(id) {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                out.push((p, child));
            }
            i += 1;
        }
        out
    }
}

fn implicit_dir(parent: NodeId) -> Node {
    Node {
        parent,
        body: Body::Dir(Box::default()),
        mode: IMPLICIT_DIR_MODE,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        size: 0,
        stored: 0,
        dev_major: 0,
        dev_minor: 0,
        nlink: 0,
        source: None,
    }
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

impl Builder {
    fn push(&mut self, node: Node) -> Result<NodeId, Error> {
        let id = u32::try_from(self.nodes.len())
            .ok()
            .filter(|&n| n < MAX_NODES)
            .ok_or(Error::TooManyNodes(MAX_NODES))?;
        self.dirs.push(node.is_dir().then(Building::new));
        self.nodes.push(node);
        Ok(NodeId(id))
    }

    fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.dirs.get(dir.index())?.as_ref()?.get(name).copied()
    }

    fn is_dir(&self, id: NodeId) -> bool {
        self.dirs.get(id.index()).is_some_and(Option::is_some)
    }

    fn set_child(&mut self, dir: NodeId, name: &[u8], id: NodeId) {
        if let Some(Some(d)) = self.dirs.get_mut(dir.index()) {
            d.insert(name.into(), id);
        }
    }

    fn remove_child(&mut self, dir: NodeId, name: &[u8]) {
        if let Some(Some(d)) = self.dirs.get_mut(dir.index()) {
            d.remove(name);
        }
    }

    /// Walk to the directory at `path`, creating implicit directories and replacing
    /// non-directories in the way.
    fn ensure_dir(&mut self, path: &[u8]) -> Result<NodeId, Error> {
        let mut dir = NodeId::ROOT;
        for c in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            dir = match self.child(dir, c) {
                Some(id) if self.is_dir(id) => id,
                _ => {
                    let id = self.push(implicit_dir(dir))?;
                    self.set_child(dir, c, id);
                    id
                }
            };
        }
        Ok(dir)
    }

    /// The directory at `path` if it exists, without creating anything.
    fn find_dir(&self, path: &[u8]) -> Option<NodeId> {
        path.split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .try_fold(NodeId::ROOT, |id, c| {
                self.child(id, c).filter(|&child| self.is_dir(child))
            })
    }

    fn find(&self, path: &[u8]) -> Option<NodeId> {
        let (parent, base) = split(path);
        if base.is_empty() {
            return Some(NodeId::ROOT);
        }
        self.child(self.find_dir(parent)?, base)
    }

    fn apply_layer(&mut self, layer: u32, entries: &[Entry]) -> Result<(), Error> {
        // Opaque markers and whiteouts act on lower layers only, so they go first.
        for e in entries {
            let (parent, base) = split(&e.path);
            if base == OPAQUE_MARKER {
                let dir = self.ensure_dir(parent)?;
                if let Some(Some(d)) = self.dirs.get_mut(dir.index()) {
                    d.clear();
                }
            } else if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX)
                && let Some(dir) = self.find_dir(parent)
            {
                self.remove_child(dir, name);
            }
        }
        for (i, e) in entries.iter().enumerate() {
            let (parent, base) = split(&e.path);
            if base.starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            let source = Source {
                layer,
                entry: i as u32,
            };
            if e.path.is_empty() {
                if e.kind == Kind::Dir {
                    set_attrs(&mut self.nodes[0], e, source);
                }
                continue;
            }
            let dir = self.ensure_dir(parent)?;
            let existing = self.child(dir, base);
            if e.kind == Kind::Dir
                && let Some(id) = existing.filter(|&id| self.is_dir(id))
            {
                set_attrs(&mut self.nodes[id.index()], e, source);
                continue;
            }
            if e.kind == Kind::Hardlink {
                match self.find(&e.link).filter(|&t| !self.is_dir(t)) {
                    Some(target) => self.set_child(dir, base, target),
                    None => log::warn!(
                        "hard link {} points to missing {}; left out",
                        String::from_utf8_lossy(&e.path),
                        String::from_utf8_lossy(&e.link)
                    ),
                }
                continue;
            }
            let body = match e.kind {
                Kind::Dir => Body::Dir(Box::default()),
                Kind::File | Kind::Hardlink => Body::File,
                Kind::Symlink => Body::Symlink,
                Kind::Char => Body::Char,
                Kind::Block => Body::Block,
                Kind::Fifo => Body::Fifo,
            };
            let mut node = implicit_dir(dir);
            node.body = body;
            set_attrs(&mut node, e, source);
            let id = self.push(node)?;
            self.set_child(dir, base, id);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Tree, Error> {
        // Freeze the children maps into the name arena and count links.
        let dirs = std::mem::take(&mut self.dirs);
        for node in &mut self.nodes {
            node.nlink = 0;
        }
        let mut names = Vec::new();
        for (i, d) in dirs.into_iter().enumerate() {
            let Some(d) = d else { continue };
            let mut children = Vec::with_capacity(d.len());
            for (name, id) in d {
                let name_start = u32::try_from(names.len()).map_err(|_| Error::TooManyNames)?;
                let name_len = u32::try_from(name.len()).map_err(|_| Error::TooManyNames)?;
                name_start
                    .checked_add(name_len)
                    .ok_or(Error::TooManyNames)?;
                names.extend_from_slice(&name);
                children.push(Child {
                    name_start,
                    name_len,
                    id,
                });
            }
            let mut subdirs = 0u32;
            for c in &children {
                let c = c.id;
                if let Some(child) = self.nodes.get_mut(c.index()) {
                    if child.is_dir() {
                        subdirs += 1;
                        child.parent = NodeId(i as u32);
                    } else {
                        child.nlink = child.nlink.saturating_add(1);
                    }
                }
            }
            if let Some(node) = self.nodes.get_mut(i) {
                node.nlink = 2u32.saturating_add(subdirs);
                node.body = Body::Dir(children.into_boxed_slice());
            }
        }
        names.shrink_to_fit();
        self.nodes.shrink_to_fit();
        Ok(Tree {
            nodes: self.nodes,
            names,
        })
    }
}

fn set_attrs(node: &mut Node, e: &Entry, source: Source) {
    node.mode = e.mode & 0o7777;
    node.uid = e.uid;
    node.gid = e.gid;
    node.mtime = e.mtime;
    node.mtime_nsec = e.mtime_nsec;
    node.dev_major = e.dev_major;
    node.dev_minor = e.dev_minor;
    node.source = Some(source);
    match e.kind {
        Kind::File | Kind::Hardlink => {
            node.size = e.size;
            node.stored = match &e.data {
                Data::Sparse { map, .. } => map.iter().map(|(_, len)| *len).sum(),
                _ => e.size,
            };
        }
        Kind::Symlink => {
            node.size = e.link.len() as u64;
            node.stored = 0;
        }
        _ => {
            node.size = 0;
            node.stored = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
            size: if kind == Kind::File { 3 } else { 0 },
            data: if kind == Kind::File {
                Data::Contiguous { offset: 512 }
            } else {
                Data::None
            },
            ..Default::default()
        }
    }

    fn link(path: &str, kind: Kind, target: &str) -> Entry {
        Entry {
            link: target.as_bytes().to_vec(),
            ..entry(path, kind)
        }
    }

    /// `path kind` lines of the reachable tree, sorted.
    fn listing(t: &Tree) -> Vec<String> {
        let mut v: Vec<String> = t
            .walk()
            .into_iter()
            .skip(1)
            .map(|(p, id)| {
                let n = t.node(id).unwrap();
                let k = match n.body {
                    Body::Dir(_) => "d",
                    Body::File => "f",
                    Body::Symlink => "l",
                    _ => "s",
                };
                format!(
                    "{} {k}{}",
                    String::from_utf8_lossy(&p),
                    n.source.map_or(9, |s| s.layer)
                )
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn merge_rules() {
        use Kind::*;
        let l0 = vec![
            entry("etc", Dir),
            entry("etc/a", File),
            entry("etc/b", File),
            entry("opt", Dir),
            entry("opt/x", File),
            entry("opt/sub", Dir),
            entry("opt/sub/y", File),
            entry("var", Dir),
            entry("var/log", Dir),
            entry("var/log/z", File),
            link("lnk", Symlink, "etc"),
            entry("gone", Dir),
            entry("gone/deep", File),
        ];
        let l1 = vec![
            entry("etc/.wh.a", File),
            entry("opt/new", File),
            entry("opt/.wh..wh..opq", File), // applies first even though it comes later
            entry("var/log", File),          // a file replaces a directory and its subtree
            entry("lnk", Dir),               // a directory replaces a symlink
            entry("lnk/inside", File),
            entry(".wh.gone", File),
            entry("implicit/dir/f", File), // parents missing from the tar
            entry("etc/b", File),          // duplicate in one layer: the last wins
            link("etc/b", Symlink, "target"),
        ];
        let l2 = vec![entry("etc/a", File)]; // re-added after its whiteout
        let t = Tree::build(&[&l0, &l1, &l2]).unwrap();
        assert_eq!(
            listing(&t),
            vec![
                "etc d0",
                "etc/a f2",
                "etc/b l1",
                "implicit d9",
                "implicit/dir d9",
                "implicit/dir/f f1",
                "lnk d1",
                "lnk/inside f1",
                "opt d0",
                "opt/new f1",
                "var d0",
                "var/log f1",
            ]
        );
        assert_eq!(t.node(t.resolve(b"etc/b").unwrap()).unwrap().size, 6);
    }

    #[test]
    fn hardlinks_share_a_node() {
        use Kind::*;
        let l0 = vec![
            entry("bin", Dir),
            entry("bin/a", File),
            link("bin/b", Hardlink, "bin/a"),
            link("c", Hardlink, "bin/a"),
            link("missing", Hardlink, "nope"),
        ];
        let t = Tree::build(&[&l0]).unwrap();
        let a = t.resolve(b"bin/a").unwrap();
        assert_eq!(t.resolve(b"bin/b"), Some(a));
        assert_eq!(t.resolve(b"c"), Some(a));
        assert_eq!(t.node(a).unwrap().nlink, 3);
        assert_eq!(t.resolve(b"missing"), None);
        assert_eq!(t.root().nlink, 3); // . and .. plus bin
        let l1 = vec![entry("bin/a", File)];
        let t = Tree::build(&[&l0, &l1]).unwrap();
        assert_ne!(t.resolve(b"bin/a"), t.resolve(b"bin/b"));
        assert_eq!(t.node(t.resolve(b"bin/b").unwrap()).unwrap().nlink, 2);
    }

    #[test]
    fn names_and_paths_come_from_the_arena() {
        use Kind::*;
        let l0 = vec![
            entry("usr/lib/x", File),
            entry("usr/bin", Dir),
            entry("a", File),
            entry("usr/lib/é", File),
        ];
        let t = Tree::build(&[&l0]).unwrap();
        let lib = t.resolve(b"usr/lib").unwrap();
        let names: Vec<&[u8]> = t.children(lib).map(|(n, _)| n).collect();
        assert_eq!(names, [&b"x"[..], "é".as_bytes()]);
        let root: Vec<&[u8]> = t.children(NodeId::ROOT).map(|(n, _)| n).collect();
        assert_eq!(root, [&b"a"[..], &b"usr"[..]]);
        for path in ["usr/lib/x", "usr/bin", "a", "usr", ""] {
            let id = t.resolve(path.as_bytes()).unwrap();
            assert_eq!(t.path(id), path.as_bytes(), "{path}");
        }
        assert_eq!(t.children(t.resolve(b"a").unwrap()).count(), 0);
        assert_eq!(t.lookup(lib, b"y"), None);
    }

    #[test]
    fn opaque_dir_then_new_content_and_root_entry() {
        use Kind::*;
        let l0 = vec![entry("d", Dir), entry("d/old", File)];
        let mut root = entry("", Dir);
        root.mode = 0o700;
        let l1 = vec![root, entry("d/.wh..wh..opq", File), entry("d/new", File)];
        let t = Tree::build(&[&l0, &l1]).unwrap();
        assert_eq!(listing(&t), vec!["d d0", "d/new f1"]);
        assert_eq!(t.root().mode, 0o700);
    }
}
