//! `cargo xtask buildroot-check`: the checks of `buildroot/` (our BR2_EXTERNAL tree) that run
//! without downloads, against a real Buildroot source tree (docs/buildroot.md):
//!
//! 1. `make havms_x86_64_defconfig` loads our defconfig;
//! 2. `make savedefconfig` gives back exactly its lines (an option Kconfig dropped, because a
//!    dependency is missing or it is misspelt, or one equal to its default, fails);
//! 3. `utils/check-package -b` passes on every file of the tree;
//! 4. `make show-info` evaluates every package of ours (its JSON names each one).
//!
//! Buildroot itself comes from `HAVMS_BUILDROOT` (a source tree or a `.tar.gz` of one), else
//! the snapshot `../shared/vendor/buildroot.tar.gz` beside the workspace (the build machines
//! cannot download), unpacked once into `target/buildroot-src/`, else a clone of Buildroot at
//! the snapshot's commit into the same place (a machine with internet).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::prereqs::{self, Need};

const DEFCONFIG: &str = "havms_x86_64_defconfig";

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Buildroot's repository and the commit of the vendored snapshot (its README).
const BUILDROOT_GIT: &str = "https://gitlab.com/buildroot.org/buildroot.git";
const BUILDROOT_COMMIT: &str = "e991fa071605a78c17adba2ed26e07c3b8c95583";

/// Clones Buildroot at [`BUILDROOT_COMMIT`] into `tree` (once).
fn clone_buildroot(tree: &Path) -> Result<PathBuf> {
    if !tree.join("Makefile").is_file() {
        log::info!(
            "xtask: no Buildroot snapshot; cloning {BUILDROOT_GIT} into {}",
            tree.display()
        );
        if tree.exists() {
            std::fs::remove_dir_all(tree)
                .with_context(|| format!("removing {}", tree.display()))?;
        }
        run(Command::new("git")
            .args(["clone", "--quiet", BUILDROOT_GIT])
            .arg(tree))?;
        run(Command::new("git").arg("-C").arg(tree).args([
            "checkout",
            "--quiet",
            BUILDROOT_COMMIT,
        ]))?;
    }
    Ok(tree.to_path_buf())
}

/// The Buildroot source tree to check against, unpacked if it is a tarball.
fn buildroot_tree() -> Result<PathBuf> {
    let root = paths::workspace_root();
    let given = std::env::var_os("HAVMS_BUILDROOT").map(PathBuf::from);
    let source = given
        .clone()
        .unwrap_or_else(|| root.join("../shared/vendor/buildroot.tar.gz"));
    if source.is_dir() {
        return Ok(source);
    }
    let dir = paths::target_dir().join("buildroot-src");
    if !source.is_file() {
        if given.is_some() {
            bail!(
                "HAVMS_BUILDROOT={} is neither a Buildroot source tree nor a .tar.gz of one",
                source.display()
            );
        }
        return clone_buildroot(&dir.join("buildroot"));
    }
    let marker = dir.join(".unpacked-from");
    let stamp = format!(
        "{} {}\n",
        source.display(),
        std::fs::metadata(&source).map(|m| m.len()).unwrap_or(0)
    );
    let tree = dir.join("buildroot");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(stamp.as_str()) {
        log::info!(
            "xtask: unpacking {} into {}",
            source.display(),
            dir.display()
        );
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        run(Command::new("tar")
            .arg("xzf")
            .arg(&source)
            .arg("-C")
            .arg(&dir))?;
        std::fs::write(&marker, &stamp).with_context(|| format!("writing {}", marker.display()))?;
    }
    if !tree.join("Makefile").is_file() {
        bail!(
            "{} has no top folder buildroot/ with a Makefile",
            source.display()
        );
    }
    Ok(tree)
}

/// Option lines of a defconfig (comments and blank lines left out), as a set.
pub fn options(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Our package names: the folders of `buildroot/package/`.
fn our_packages(external: &Path) -> Result<Vec<String>> {
    let dir = external.join("package");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            files_under(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

pub fn run_checks() -> Result<()> {
    prereqs::ensure(&[Need::Buildroot])?;
    let tree = buildroot_tree()?;
    let external = paths::workspace_root().join("buildroot");
    let out = paths::target_dir().join("buildroot-out");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("removing {}", out.display()))?;
    }
    let make = |args: &[&str]| -> Result<String> {
        let mut cmd = Command::new("make");
        cmd.current_dir(&tree)
            .arg(format!("O={}", out.display()))
            .arg(format!("BR2_EXTERNAL={}", external.display()))
            .args(args);
        run(&mut cmd)
    };

    make(&[DEFCONFIG])?;
    let saved = out.join("saved_defconfig");
    make(&[
        "savedefconfig",
        &format!("BR2_DEFCONFIG={}", saved.display()),
    ])?;
    let ours_path = external.join("configs").join(DEFCONFIG);
    let ours = options(
        &std::fs::read_to_string(&ours_path)
            .with_context(|| format!("reading {}", ours_path.display()))?,
    );
    let back = options(
        &std::fs::read_to_string(&saved).with_context(|| format!("reading {}", saved.display()))?,
    );
    if ours != back {
        let dropped: Vec<_> = ours.difference(&back).collect();
        let added: Vec<_> = back.difference(&ours).collect();
        bail!(
            "{DEFCONFIG} does not survive savedefconfig: dropped {dropped:?} (a missing \
             dependency, a misspelt name, or a default value), added {added:?}"
        );
    }
    log::info!(
        "xtask: {DEFCONFIG}: {} options, savedefconfig gives them back",
        ours.len()
    );

    let mut files = Vec::new();
    files_under(&external, &mut files)?;
    files.sort();
    let mut check = Command::new("/usr/bin/python3");
    // Buildroot's utils run flake8 and shellcheck from PATH; the system python has python3-magic.
    check
        .current_dir(&external)
        .arg(tree.join("utils/check-package"))
        .arg("-b")
        .args(files.iter().map(|f| f.strip_prefix(&external).unwrap_or(f)));
    // It exits 1 on any warning and prints its tally on stderr.
    let out = check.output().context("cannot run utils/check-package")?;
    let tally = String::from_utf8_lossy(&out.stderr)
        .trim()
        .replace('\n', ", ");
    if !out.status.success() {
        bail!(
            "utils/check-package found problems ({tally}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    log::info!("xtask: check-package on {} files: {tally}", files.len());

    let info = make(&["show-info"])?;
    let json: serde_json::Value =
        serde_json::from_str(&info).context("show-info did not print JSON")?;
    for pkg in our_packages(&external)? {
        let entry = json
            .get(&pkg)
            .with_context(|| format!("show-info does not know package {pkg}"))?;
        log::info!(
            "xtask: show-info: {pkg} {} ({})",
            entry.get("version").and_then(|v| v.as_str()).unwrap_or("?"),
            entry.get("type").and_then(|v| v.as_str()).unwrap_or("?")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::options;

    #[test]
    fn defconfig_options_ignore_comments() {
        let set = options("# a comment\nBR2_x86_64=y\n\n  BR2_PACKAGE_HAVMS=y\n");
        assert_eq!(
            set.into_iter().collect::<Vec<_>>(),
            ["BR2_PACKAGE_HAVMS=y", "BR2_x86_64=y"]
        );
    }
}
