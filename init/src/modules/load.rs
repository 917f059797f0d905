//! Loads modules into the running kernel with finit_module(2), following a `DepDb` plan.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

use super::dep::DepDb;
use crate::cmdline::normalize_module;

/// MODULE_INIT_COMPRESSED_FILE (Linux 5.17): the kernel decompresses .ko.xz/.zst/.gz itself.
const MODULE_INIT_COMPRESSED_FILE: u32 = 4;

/// What happened to one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Inserted now (with this many dependencies inserted before it).
    Loaded { deps: usize },
    /// Built into the kernel or loaded before: nothing to do.
    Present,
}

pub struct Loader {
    dir: PathBuf,
    db: DepDb,
    /// Why the dependency database is unusable, when it is.
    db_error: Option<String>,
    loaded: HashSet<String>,
    failed: HashMap<String, String>,
    params: HashMap<String, Vec<String>>,
}

/// /lib/modules/$(uname -r).
pub fn modules_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

/// Names in /proc/modules (already normalised by the kernel).
fn running_modules() -> HashSet<String> {
    std::fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

impl Loader {
    /// Reads modules.dep and modules.builtin from `dir`. Never fails: a missing modules.dep
    /// makes every later load fail with the reason, so each module is still reported.
    pub fn open(dir: &Path) -> Self {
        let dep_path = dir.join("modules.dep");
        let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let (db, db_error) = match std::fs::read_to_string(&dep_path) {
            Ok(text) => match DepDb::parse(&text, &builtin) {
                Ok(db) => (db, None),
                Err(e) => (
                    DepDb::default(),
                    Some(format!("{}: {e}", dep_path.display())),
                ),
            },
            Err(e) => (
                DepDb::default(),
                Some(format!("cannot read {}: {e}", dep_path.display())),
            ),
        };
        Self {
            dir: dir.to_path_buf(),
            db,
            db_error,
            loaded: running_modules(),
            failed: HashMap::new(),
            params: HashMap::new(),
        }
    }

    pub fn db_error(&self) -> Option<&str> {
        self.db_error.as_deref()
    }

    /// Parameters to pass whenever `module` gets loaded, as a dependency or by name.
    pub fn add_params(&mut self, module: &str, params: &str) {
        if !params.trim().is_empty() {
            self.params
                .entry(normalize_module(module))
                .or_default()
                .push(params.trim().to_string());
        }
    }

    pub fn is_loaded(&self, module: &str) -> bool {
        let key = normalize_module(module);
        self.loaded.contains(&key) || self.db.is_builtin(&key)
    }

    /// Loads `name` and its dependencies. The error is the reason, ready for
    /// `module NAME failed: REASON`.
    pub fn load(&mut self, name: &str) -> Result<Outcome, String> {
        let key = normalize_module(name);
        if self.is_loaded(&key) {
            return Ok(Outcome::Present);
        }
        if let Some(reason) = self.failed.get(&key) {
            return Err(reason.clone());
        }
        if let Some(e) = &self.db_error {
            return Err(e.clone());
        }
        let plan = self
            .db
            .plan(&key, &self.loaded)
            .map_err(|e| e.to_string())?;
        let deps = plan.len().saturating_sub(1);
        for step in plan {
            if let Some(reason) = self.failed.get(&step.name) {
                return Err(format!("dependency {} failed: {reason}", step.name));
            }
            match self.insert(&step.name, &step.path) {
                Ok(()) => {
                    log::info!("loaded module {}", step.name);
                    self.loaded.insert(step.name);
                }
                Err(reason) => {
                    self.failed.insert(step.name.clone(), reason.clone());
                    return Err(if step.name == key {
                        reason
                    } else {
                        format!("dependency {} failed: {reason}", step.name)
                    });
                }
            }
        }
        Ok(Outcome::Loaded { deps })
    }

    fn insert(&self, name: &str, rel_path: &str) -> Result<(), String> {
        let path = self.dir.join(rel_path);
        let file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let params = self
            .params
            .get(name)
            .map(|p| p.join(" "))
            .unwrap_or_default();
        let params =
            CString::new(params).map_err(|_| "parameters contain a NUL byte".to_string())?;
        let mut flags = ModuleInitFlags::empty();
        if !rel_path.ends_with(".ko") {
            flags |= ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE);
        }
        match finit_module(&file, &params, flags) {
            Ok(()) => Ok(()),
            // EEXIST means "loaded already" (a race with the kernel's request_module) only when the
            // module is really there: kvm_intel answers EEXIST too when kvm_amd holds kvm, and that
            // is a failure.
            Err(Errno::EEXIST) if is_live(name, Path::new("/proc/modules")) => Ok(()),
            Err(Errno::EEXIST) => Err(format!(
                "finit_module {}: {} (the kernel refused it; it is not loaded)",
                path.display(),
                Errno::EEXIST
            )),
            Err(e) => Err(format!("finit_module {}: {e}", path.display())),
        }
    }
}

/// Whether `/proc/modules` (at `proc_modules`) lists module `name` (`-` and `_` alike).
fn is_live(name: &str, proc_modules: &Path) -> bool {
    let want = name.replace('-', "_");
    std::fs::read_to_string(proc_modules).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .any(|m| m.replace('-', "_") == want)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn live_modules_are_read_from_proc_modules() {
        let f = std::env::temp_dir().join(format!("havms-proc-modules-{}", std::process::id()));
        std::fs::write(
            &f,
            "kvm_amd 155648 0 - Live 0x0\nkvm 1146880 1 kvm_amd, Live 0x0\n",
        )
        .unwrap();
        assert!(super::is_live("kvm-amd", &f));
        assert!(super::is_live("kvm", &f));
        assert!(!super::is_live("kvm_intel", &f));
        assert!(!super::is_live(
            "kvm",
            std::path::Path::new("/nonexistent/proc/modules")
        ));
        std::fs::remove_file(&f).unwrap();
    }

    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "havms-init-load-{}-{}",
            std::process::id(),
            files.len()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    /// Failure paths that stop before finit_module (the host kernel is not ours to load into):
    /// every module reports why, dependencies' failures name the dependency, built-ins and
    /// modules the kernel already has are no-ops.
    #[test]
    fn reports_reasons_without_touching_the_kernel() {
        let none = dir_with(&[]);
        let mut l = Loader::open(&none);
        assert!(l.db_error().unwrap().contains("modules.dep"));
        let err = l.load("kvm").unwrap_err();
        assert!(
            err.starts_with("cannot read ") && err.contains("modules.dep"),
            "{err}"
        );

        let dir = dir_with(&[
            (
                "modules.dep",
                "kernel/kvm-amd.ko: kernel/kvm.ko kernel/irqbypass.ko\nkernel/kvm.ko: kernel/irqbypass.ko\nkernel/irqbypass.ko:\n",
            ),
            ("modules.builtin", "kernel/drivers/virtio/virtio.ko\n"),
        ]);
        let mut l = Loader::open(&dir);
        assert_eq!(l.db_error(), None);
        let err = l.load("kvm-amd").unwrap_err();
        assert!(err.starts_with("dependency irqbypass failed: "), "{err}");
        assert!(err.contains("kernel/irqbypass.ko"), "{err}");
        // The failure is remembered, not retried.
        assert_eq!(l.load("kvm").unwrap_err(), err);
        assert!(l.load("irqbypass").unwrap_err().contains("No such file"));
        assert_eq!(l.load("nosuch").unwrap_err(), "not found in modules.dep");
        assert_eq!(l.load("virtio"), Ok(Outcome::Present));
        std::fs::remove_dir_all(&none).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
