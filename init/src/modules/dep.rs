//! modules.dep resolution: which files to load, in which order, for one module.
//!
//! depmod's format: `path/mod.ko: path/dep1.ko path/dep2.ko`, paths relative to
//! /lib/modules/<kver>, each line listing the module's full (transitive) dependencies.
//! We do not trust the order of that list: a depth-first walk loads every dependency before
//! its user, each once, and reports a cycle instead of looping.

use std::collections::{HashMap, HashSet};

use crate::cmdline::normalize_module;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DepError {
    #[error("modules.dep:{line}: {reason}")]
    Parse { line: usize, reason: String },
    #[error("not found in modules.dep")]
    NotFound,
    #[error("dependency {0} not found in modules.dep")]
    MissingDependency(String),
    #[error("dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModEntry {
    path: String,
    deps: Vec<String>,
}

/// One step of a load plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Normalised module name (`kvm_amd`).
    pub name: String,
    /// Path relative to the modules directory.
    pub path: String,
}

#[derive(Debug, Default, Clone)]
pub struct DepDb {
    modules: HashMap<String, ModEntry>,
    builtin: HashSet<String>,
}

/// `kernel/arch/x86/kvm/kvm-amd.ko.xz` -> `kvm_amd`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.find(".ko").map_or(file, |i| &file[..i]);
    normalize_module(stem)
}

impl DepDb {
    pub fn parse(dep_text: &str, builtin_text: &str) -> Result<Self, DepError> {
        let mut modules = HashMap::new();
        for (i, line) in dep_text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(DepError::Parse {
                    line: i + 1,
                    reason: format!("expected `module.ko: deps...`, got `{line}`"),
                });
            };
            let path = path.trim();
            if !path.contains(".ko") {
                return Err(DepError::Parse {
                    line: i + 1,
                    reason: format!("`{path}` is not a .ko file"),
                });
            }
            let deps = deps.split_whitespace().map(module_name).collect();
            modules.insert(
                module_name(path),
                ModEntry {
                    path: path.to_string(),
                    deps,
                },
            );
        }
        let builtin = builtin_text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        Ok(Self { modules, builtin })
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_module(name))
    }

    #[cfg(test)]
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.modules
            .get(&normalize_module(name))
            .map(|m| m.path.as_str())
    }

    /// The modules to load for `name`, dependencies first, skipping built-in modules and those
    /// in `loaded` (normalised names). Empty when there is nothing to do.
    pub fn plan(&self, name: &str, loaded: &HashSet<String>) -> Result<Vec<Step>, DepError> {
        let name = normalize_module(name);
        if self.builtin.contains(&name) || loaded.contains(&name) {
            return Ok(Vec::new());
        }
        if !self.modules.contains_key(&name) {
            return Err(DepError::NotFound);
        }
        let mut plan = Vec::new();
        let mut done = HashSet::new();
        let mut stack = Vec::new();
        self.visit(&name, loaded, &mut done, &mut stack, &mut plan)?;
        Ok(plan)
    }

    fn visit(
        &self,
        name: &str,
        loaded: &HashSet<String>,
        done: &mut HashSet<String>,
        stack: &mut Vec<String>,
        plan: &mut Vec<Step>,
    ) -> Result<(), DepError> {
        if done.contains(name) || loaded.contains(name) || self.builtin.contains(name) {
            return Ok(());
        }
        if let Some(pos) = stack.iter().position(|s| s == name) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(name.to_string());
            return Err(DepError::Cycle(cycle));
        }
        let entry = self
            .modules
            .get(name)
            .ok_or_else(|| DepError::MissingDependency(name.to_string()))?;
        stack.push(name.to_string());
        // depmod lists the deepest dependencies last; walking in reverse follows modprobe's
        // order when the list is right, and the walk makes it right when it is not.
        for dep in entry.deps.iter().rev() {
            self.visit(dep, loaded, done, stack, plan)?;
        }
        stack.pop();
        done.insert(name.to_string());
        plan.push(Step {
            name: name.to_string(),
            path: entry.path.clone(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko kernel/drivers/crypto/ccp/ccp.ko
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/crypto/ccp/ccp.ko.xz:
kernel/drivers/net/tun.ko:
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/x/broken.ko: kernel/x/gone.ko
kernel/x/a.ko: kernel/x/b.ko
kernel/x/b.ko: kernel/x/c.ko
kernel/x/c.ko: kernel/x/a.ko
";
    const BUILTIN: &str = "kernel/lib/crc16.ko\nkernel/drivers/virtio/virtio.ko\n";

    fn db() -> DepDb {
        DepDb::parse(DEP, BUILTIN).unwrap()
    }

    fn names(plan: &[Step]) -> Vec<&str> {
        plan.iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(module_name("kernel/arch/x86/kvm/kvm-amd.ko"), "kvm_amd");
        assert_eq!(module_name("kernel/drivers/crypto/ccp/ccp.ko.xz"), "ccp");
        assert_eq!(module_name("vfat.ko.zst"), "vfat");
    }

    #[test]
    fn dependencies_come_first_each_once() {
        let plan = db().plan("kvm-amd", &HashSet::new()).unwrap();
        assert_eq!(names(&plan), vec!["ccp", "irqbypass", "kvm", "kvm_amd"]);
        assert_eq!(plan[3].path, "kernel/arch/x86/kvm/kvm-amd.ko");
        assert_eq!(plan[0].path, "kernel/drivers/crypto/ccp/ccp.ko.xz");
        let plan = db().plan("bridge", &HashSet::new()).unwrap();
        assert_eq!(names(&plan), vec!["llc", "stp", "bridge"]);
    }

    #[test]
    fn loaded_and_builtin_are_skipped() {
        let loaded: HashSet<String> = ["irqbypass".to_string()].into();
        let plan = db().plan("kvm_amd", &loaded).unwrap();
        assert_eq!(names(&plan), vec!["ccp", "kvm", "kvm_amd"]);
        assert!(db()
            .plan("kvm", &["kvm".to_string()].into())
            .unwrap()
            .is_empty());
        // crc16 is built in: ext4 still loads, without it.
        let plan = db().plan("ext4", &HashSet::new()).unwrap();
        assert_eq!(names(&plan), vec!["jbd2", "mbcache", "ext4"]);
        assert!(db().plan("virtio", &HashSet::new()).unwrap().is_empty());
        assert!(db().is_builtin("crc16"));
    }

    #[test]
    fn dash_and_underscore_are_the_same() {
        assert_eq!(
            db().path_of("kvm_amd"),
            Some("kernel/arch/x86/kvm/kvm-amd.ko")
        );
        assert_eq!(db().path_of("kvm-amd"), db().path_of("kvm_amd"));
    }

    #[test]
    fn missing_modules_are_errors() {
        assert_eq!(
            db().plan("nosuchmod", &HashSet::new()),
            Err(DepError::NotFound)
        );
        assert_eq!(
            db().plan("broken", &HashSet::new()),
            Err(DepError::MissingDependency("gone".to_string()))
        );
    }

    #[test]
    fn cycles_are_reported() {
        let err = db().plan("a", &HashSet::new()).unwrap_err();
        assert_eq!(
            err,
            DepError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()])
        );
        assert_eq!(err.to_string(), "dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let err = DepDb::parse("kernel/a.ko:\nthis is not a dep line\n", "").unwrap_err();
        assert_eq!(err.to_string().split(':').next(), Some("modules.dep"));
        assert!(matches!(err, DepError::Parse { line: 2, .. }));
        assert!(DepDb::parse("notako: x.ko\n", "").is_err());
    }
}
