//! Which kernel modules go into the image: indexes a `lib/modules/KVER` tree, resolves the
//! modules list to its dependency closure from each `.ko`'s `.modinfo`, and writes `modules.dep`
//! in depmod's format so init (and busybox modprobe) can load dependencies first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::modinfo;
use crate::modlist::{self, normalize, ModuleEntry};

/// Name -> file index over `lib/modules/KVER`.
#[derive(Debug)]
pub struct ModuleIndex {
    /// The `lib/modules/KVER` directory.
    root: PathBuf,
    /// Normalized name -> path relative to `root` (`kernel/net/bridge/bridge.ko`).
    by_name: BTreeMap<String, String>,
    /// Normalized names of modules built into the kernel (from `modules.builtin`).
    builtin: BTreeSet<String>,
}

/// The modules the image carries, each with its transitive dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    /// Path relative to the modules root -> its transitive dependencies (relative paths), in
    /// depmod order: a module appears before the modules it depends on, so loading the list
    /// from last to first loads every dependency before its users.
    pub modules: BTreeMap<String, Vec<String>>,
    /// Names from the list that are built into the kernel (nothing to load or copy).
    pub builtin: Vec<String>,
}

fn module_name_of(file_name: &str) -> Option<&str> {
    file_name.strip_suffix(".ko").or_else(|| {
        [".ko.xz", ".ko.zst", ".ko.gz"]
            .iter()
            .find_map(|ext| file_name.strip_suffix(ext))
    })
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(Error::io(dir))?
        .collect::<std::io::Result<_>>()
        .map_err(Error::io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(Error::io(&path))?;
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

impl ModuleIndex {
    /// Indexes `root` (a `lib/modules/KVER` directory): every module file under `kernel/`, and
    /// the names in `modules.builtin` when that file exists.
    pub fn scan(root: &Path) -> Result<Self> {
        let mut files = Vec::new();
        walk(root, &root.join("kernel"), &mut files)?;
        let mut by_name = BTreeMap::new();
        for rel in files {
            let file_name = rel.rsplit('/').next().unwrap_or(&rel);
            if let Some(name) = module_name_of(file_name) {
                let key = normalize(name);
                if let Some(first) = by_name.get(&key) {
                    log::warn!("module {key} found twice: keeping {first}, ignoring {rel}");
                } else {
                    by_name.insert(key, rel);
                }
            }
        }
        let builtin_path = root.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.rsplit('/').next())
                .filter_map(module_name_of)
                .map(normalize)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(Error::io(builtin_path)(e)),
        };
        Ok(Self {
            root: root.to_path_buf(),
            by_name,
            builtin,
        })
    }

    /// The `lib/modules/KVER` directory this index covers.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The module file for `name` (either `-` or `_` form), relative to [`Self::root`].
    pub fn lookup(&self, name: &str) -> Option<&str> {
        self.by_name.get(&normalize(name)).map(String::as_str)
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Number of loadable modules indexed.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the tree holds no loadable module at all.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The names the list asks for, with `kvm-vendor` expanded to every vendor module.
fn wanted(entries: &[ModuleEntry]) -> Vec<(String, &ModuleEntry)> {
    let mut out = Vec::new();
    for entry in entries {
        if normalize(&entry.name) == normalize(modlist::KVM_VENDOR) {
            out.extend(
                modlist::KVM_VENDOR_MODULES
                    .iter()
                    .map(|m| (m.to_string(), entry)),
            );
        } else {
            out.push((entry.name.clone(), entry));
        }
    }
    out
}

struct Resolver<'a> {
    index: &'a ModuleIndex,
    /// relative path -> direct dependencies (relative paths of loadable modules).
    direct: BTreeMap<String, Vec<String>>,
}

impl Resolver<'_> {
    /// Reads `rel`'s `.modinfo` and, recursively, its dependencies'.
    fn visit(&mut self, rel: &str) -> Result<()> {
        if self.direct.contains_key(rel) {
            return Ok(());
        }
        let info = modinfo::read(&self.index.root.join(rel))?;
        let mut deps = Vec::new();
        for dep in &info.depends {
            match self.index.lookup(dep) {
                Some(dep_rel) => deps.push(dep_rel.to_string()),
                None if self.index.is_builtin(dep) => {}
                None => {
                    return Err(Error::MissingDependency {
                        module: rel.to_string(),
                        dependency: dep.clone(),
                        dir: self.index.root.clone(),
                    })
                }
            }
        }
        self.direct.insert(rel.to_string(), deps.clone());
        for dep in deps {
            self.visit(&dep)?;
        }
        Ok(())
    }

    /// Post-order walk: every dependency of `rel` lands in `order` before `rel`.
    fn load_order(
        &self,
        rel: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(rel) {
            return Ok(());
        }
        if let Some(pos) = stack.iter().position(|s| s == rel) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(rel.to_string());
            return Err(Error::DependencyCycle(cycle.join(" -> ")));
        }
        stack.push(rel.to_string());
        for dep in self.direct.get(rel).into_iter().flatten() {
            self.load_order(dep, stack, done, order)?;
        }
        stack.pop();
        done.insert(rel.to_string());
        order.push(rel.to_string());
        Ok(())
    }
}

/// Resolves the list to the set of module files the image needs. Unknown names fail with the
/// list file and line; names built into the kernel are accepted and need nothing.
pub fn resolve(index: &ModuleIndex, entries: &[ModuleEntry], list_file: &Path) -> Result<Closure> {
    let mut resolver = Resolver {
        index,
        direct: BTreeMap::new(),
    };
    let mut roots = Vec::new();
    let mut builtin = Vec::new();
    for (name, entry) in wanted(entries) {
        match index.lookup(&name) {
            Some(rel) => {
                resolver.visit(rel)?;
                roots.push(rel.to_string());
            }
            None if index.is_builtin(&name) => builtin.push(name),
            None => {
                return Err(Error::ModulesList {
                    file: list_file.to_path_buf(),
                    line: entry.line,
                    reason: format!(
                        "no module {name} in {} (neither a .ko nor in modules.builtin)",
                        index.root.display()
                    ),
                })
            }
        }
    }
    let mut modules = BTreeMap::new();
    for rel in resolver.direct.keys() {
        let mut order = Vec::new();
        resolver.load_order(rel, &mut Vec::new(), &mut BTreeSet::new(), &mut order)?;
        order.pop(); // the module itself comes last in load order
        order.reverse();
        modules.insert(rel.clone(), order);
    }
    Ok(Closure { modules, builtin })
}

/// `modules.dep` text for the closure, in depmod's format: `kernel/a.ko: kernel/b.ko kernel/c.ko`.
pub fn modules_dep(closure: &Closure) -> String {
    let mut out = String::new();
    for (module, deps) in &closure.modules {
        out.push_str(module);
        out.push(':');
        for dep in deps {
            out.push(' ');
            out.push_str(dep);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[path = "modules_tests.rs"]
mod tests;
