//! The initramfs as an in-memory tree: paths (sorted, so a directory always precedes its
//! contents) mapped to directories, files and symlinks. File bytes stay on disk until written.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Bytes(Vec<u8>),
    /// Read when the archive is written.
    Path(PathBuf),
}

/// One entry of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        contents: Contents,
    },
    Symlink {
        target: String,
    },
    /// A character device node (the kernel needs `/dev/console` before init mounts devtmpfs).
    CharDev {
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Paths are stored relative to `/`, without a leading slash (`usr/bin/havmsd`).
#[derive(Debug, Default, Clone)]
pub struct Tree {
    entries: BTreeMap<String, Node>,
}

fn clean(path: &str) -> Result<String> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(trimmed.to_string())
    } else {
        Err(Error::Tree {
            path: path.to_string(),
            reason: "not a plain absolute path".into(),
        })
    }
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents, 0755). Adding an existing directory again is fine.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<()> {
        let path = clean(path)?;
        self.add_parents(&path)?;
        match self.entries.get(&path) {
            Some(Node::Dir { .. }) => Ok(()),
            Some(_) => Err(self.exists(&path)),
            None => {
                self.entries.insert(path, Node::Dir { mode });
                Ok(())
            }
        }
    }

    /// Adds a regular file; its parent directories are created 0755.
    pub fn add_file(&mut self, path: &str, mode: u32, contents: Contents) -> Result<()> {
        self.add_leaf(path, Node::File { mode, contents })
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.add_leaf(
            path,
            Node::Symlink {
                target: target.to_string(),
            },
        )
    }

    /// Adds a character device node.
    pub fn add_char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.add_leaf(path, Node::CharDev { mode, major, minor })
    }

    /// Whether something already sits at `path`.
    pub fn contains(&self, path: &str) -> bool {
        clean(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// Entries in archive order (sorted by path bytes: parents first).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn add_leaf(&mut self, path: &str, node: Node) -> Result<()> {
        let path = clean(path)?;
        if self.entries.contains_key(&path) {
            return Err(self.exists(&path));
        }
        self.add_parents(&path)?;
        self.entries.insert(path, node);
        Ok(())
    }

    fn add_parents(&mut self, path: &str) -> Result<()> {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            match self.entries.get(parent) {
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(Error::Tree {
                        path: path.to_string(),
                        reason: format!("/{parent} is not a directory"),
                    })
                }
                None => {
                    self.entries
                        .insert(parent.to_string(), Node::Dir { mode: 0o755 });
                }
            }
            end += pos + 1;
        }
        Ok(())
    }

    fn exists(&self, path: &str) -> Error {
        Error::Tree {
            path: path.to_string(),
            reason: "added twice".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_created_and_sorted_first() {
        let mut t = Tree::new();
        t.add_file("/usr/bin/havmsd", 0o755, Contents::Bytes(b"x".to_vec()))
            .expect("add");
        t.add_symlink("/bin-x", "/bin/busybox").expect("add");
        t.add_dir("/usr", 0o755)
            .expect("existing dir again is fine");
        let paths: Vec<_> = t.entries().map(|(p, _)| p).collect();
        assert_eq!(paths, vec!["bin-x", "usr", "usr/bin", "usr/bin/havmsd"]);
    }

    #[test]
    fn duplicates_and_bad_paths_are_errors() {
        let mut t = Tree::new();
        t.add_file("/init", 0o755, Contents::Bytes(vec![]))
            .expect("add");
        let err = t.add_symlink("/init", "/bin/busybox").expect_err("twice");
        assert!(err.to_string().contains("/init"), "{err}");
        assert!(t.add_dir("/a/../b", 0o755).is_err());
        assert!(t
            .add_file("/init/x", 0o644, Contents::Bytes(vec![]))
            .is_err());
    }
}
