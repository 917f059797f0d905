//! The copies' metadata as the VM service keeps it: each VM's [`Record`], read from the data
//! partition the first time the VM is looked at, and moved on by `copies::lifecycle` at each
//! occasion. What an action needs saved goes with the action (the executor saves it before
//! the VM runs alone or a replica overwrites the copy); what an engine's report needs saved
//! (a stream synced, a takeover done) is saved here at once. Either way the peer hears the new
//! metadata only once it is on disk, or from the action about to save it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::copies::lifecycle::{self, Occasion};
use crate::copies::meta::{CopyMeta, GenId};
use crate::copies::record::Record;
use crate::copies::store;

/// How long after a failed save the next is tried (a full or broken data partition would
/// otherwise be written, and logged, every tick).
const SAVE_RETRY: Duration = Duration::from_secs(5);

pub struct Copies {
    dir: PathBuf,
    records: BTreeMap<String, Record>,
    failed: BTreeMap<String, Instant>,
    /// The record before the last `plan`, for an action that failed without running the VM.
    before: BTreeMap<String, Record>,
}

/// A new generation id (never 0).
pub fn fresh_generation() -> GenId {
    loop {
        let g = havms_vmm::replication::primary::random_u64();
        if g != 0 {
            return GenId(g);
        }
    }
}

impl Copies {
    pub fn new(dir: PathBuf) -> Copies {
        Copies {
            dir,
            records: BTreeMap::new(),
            failed: BTreeMap::new(),
            before: BTreeMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `vm`'s record, read from disk the first time.
    pub fn get(&mut self, vm: &str) -> &Record {
        let dir = &self.dir;
        self.records
            .entry(vm.to_string())
            .or_insert_with(|| Record::load(dir, vm))
    }

    /// `vm`'s record if it was read already (`get` reads it).
    pub fn peek(&self, vm: &str) -> Option<&Record> {
        self.records.get(vm)
    }

    /// Reads `vm`'s record from disk again (after a save that may have failed).
    pub fn reload(&mut self, vm: &str) {
        self.before.remove(vm);
        self.records
            .insert(vm.to_string(), Record::load(&self.dir, vm));
    }

    /// The metadata `occasion` needs saved before the action runs, taken as the record from
    /// now on; the caller saves it (the executor, before it acts) and reloads on failure.
    pub fn plan(&mut self, vm: &str, occasion: Occasion<'_>) -> Option<CopyMeta> {
        // Only the action planned now may be taken back: an older undo would roll the copy
        // back past what it ran since.
        self.before.remove(vm);
        let next = lifecycle::next(self.get(vm), occasion, fresh_generation())?;
        log::info!(
            "vm {vm}: its copy here becomes {}",
            Record::Known(next.clone()).describe()
        );
        let before = self
            .records
            .insert(vm.to_string(), Record::Known(next.clone()));
        self.before
            .insert(vm.to_string(), before.unwrap_or_default());
        Some(next)
    }

    /// The action planned last for `vm` is over (it ran, or its outcome came): nothing to
    /// take back any more.
    pub fn forget(&mut self, vm: &str) {
        self.before.remove(vm);
    }

    /// The action planned last for `vm` failed and the VM did not run (a takeover refused, its
    /// replica kept): the generation it drew is taken back, so a copy that never ran alone
    /// does not read as diverged later. The disk is made to say what the record says.
    pub fn restore(&mut self, vm: &str) {
        let Some(before) = self.before.remove(vm) else {
            return self.reload(vm);
        };
        let saved = match &before {
            Record::Known(m) => store::save(&self.dir, vm, m).map_err(|e| e.to_string()),
            Record::Absent => match std::fs::remove_file(store::path(&self.dir, vm)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
                _ => Ok(()),
            },
            // Not written over: it stays what the disk holds.
            Record::Unknown(_) => Ok(()),
        };
        match saved {
            Ok(()) => {
                self.records.insert(vm.to_string(), before);
            }
            Err(e) => {
                log::error!("vm {vm}: restoring its copy's metadata: {e}");
                self.reload(vm);
            }
        }
    }

    /// Sets this node's copy of `vm` aside (`havms resolve` kept the peer's, at generation
    /// `kept`), so that it is synced whole from the peer's; nothing is deleted. In an order
    /// that a power cut at any step leaves safe:
    /// 1. the metadata file is copied to `NAME.json.set-aside-GEN-MS` (synced);
    /// 2. each disk image in `disks` is renamed with the same suffix, the directory synced:
    ///    the old bytes are out of the sync's way before anything allows a sync;
    /// 3. the metadata becomes a replica-to-be of `kept` (torn, not primary: never a source,
    ///    never booted alone, and no longer the diverged copy: the next sync may overwrite);
    /// 4. a blank (sparse) image of each one's size takes its place.
    ///
    /// A cut after 2 leaves the old record with its images gone: still the conflict, and
    /// nothing to boot or overwrite (an engine refuses a missing disk); the resolve is asked
    /// again. A cut after 3 leaves a replica-to-be without images, which the replica engine
    /// creates (docs/replication.md). A set-aside that cannot finish undoes itself and
    /// reports the step. Returns where the copy went.
    pub fn set_aside(
        &mut self,
        vm: &str,
        disks: &[PathBuf],
        kept: GenId,
    ) -> Result<String, String> {
        let done = self.set_aside_once(vm, disks, kept);
        if done.is_err() {
            self.failed.insert(vm.to_string(), Instant::now());
        }
        done
    }

    /// A save or a set-aside of `vm` failed within the last few seconds (retried after).
    pub fn failed_recently(&self, vm: &str) -> bool {
        self.failed
            .get(vm)
            .is_some_and(|t| t.elapsed() < SAVE_RETRY)
    }

    fn set_aside_once(
        &mut self,
        vm: &str,
        disks: &[PathBuf],
        kept: GenId,
    ) -> Result<String, String> {
        let generation = match self.get(vm) {
            Record::Known(m) => m.current().to_string(),
            _ => "unusable".to_string(),
        };
        let suffix = format!(
            "set-aside-{generation}-{}",
            crate::vms::intent::now_version()
        );
        let aside = |p: &Path| PathBuf::from(format!("{}.{suffix}", p.display()));
        let meta = store::path(&self.dir, vm);
        // 1. The metadata, copied aside.
        let original = match std::fs::read_to_string(&meta) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("reading {}: {e}", meta.display())),
        };
        if let Some(text) = &original {
            crate::vms::durable::write_synced(&aside(&meta), text)
                .map_err(|e| format!("copying {} aside: {e}", meta.display()))?;
        }
        let put_back = || {
            let _ = std::fs::remove_file(aside(&meta));
        };
        // 2. The images, renamed aside.
        let mut moved: Vec<(PathBuf, u64)> = Vec::new();
        let undo = |moved: &[(PathBuf, u64)]| {
            for (d, _) in moved {
                let _ = std::fs::rename(aside(d), d);
            }
            sync_dirs(moved);
        };
        for d in disks {
            let len = match std::fs::metadata(d) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    undo(&moved);
                    put_back();
                    return Err(format!("{}: {e}", d.display()));
                }
            };
            if let Err(e) = std::fs::rename(d, aside(d)) {
                undo(&moved);
                put_back();
                return Err(format!("renaming {}: {e}", d.display()));
            }
            moved.push((d.clone(), len));
        }
        // The renames must outlive a power cut before anything lets the copy be overwritten.
        sync_dirs(&moved);
        // 3. A replica-to-be of the kept copy.
        let to_be = CopyMeta::sync_target(kept);
        if let Err(e) = store::save(&self.dir, vm, &to_be) {
            undo(&moved);
            put_back();
            return Err(e.to_string());
        }
        // 4. Blank images in their place. One that cannot be made is left missing (the
        //    replica engine creates it), never half made: a wrong size is refused.
        for (d, len) in &moved {
            let blank =
                std::fs::File::create(d).and_then(|f| f.set_len(*len).and_then(|()| f.sync_all()));
            if let Err(e) = blank {
                log::warn!(
                    "vm {vm}: a blank {} (the replica engine makes it): {e}",
                    d.display()
                );
                let _ = std::fs::remove_file(d);
            }
        }
        sync_dirs(&moved);
        self.records.insert(vm.to_string(), Record::Known(to_be));
        self.failed.remove(vm);
        let mut kept_as: Vec<String> = moved
            .iter()
            .map(|(d, _)| aside(d).display().to_string())
            .collect();
        if original.is_some() {
            kept_as.push(aside(&meta).display().to_string());
        }
        Ok(format!("kept as {}", kept_as.join(", ")))
    }

    /// Saves what `occasion` changes, now; true when something was saved. A failure is
    /// logged and the record stays what the disk holds.
    pub fn apply(&mut self, vm: &str, occasion: Occasion<'_>) -> bool {
        if self.failed_recently(vm) {
            return false;
        }
        let Some(next) = lifecycle::next(self.get(vm), occasion, fresh_generation()) else {
            return false;
        };
        match store::save(&self.dir, vm, &next) {
            Ok(()) => {
                log::info!(
                    "vm {vm}: its copy here is now {}",
                    Record::Known(next.clone()).describe()
                );
                self.records.insert(vm.to_string(), Record::Known(next));
                self.failed.remove(vm);
                true
            }
            Err(e) => {
                log::error!("vm {vm}: cannot save its copy's metadata: {e}");
                self.failed.insert(vm.to_string(), Instant::now());
                false
            }
        }
    }
}

/// Syncs the directories of `moved`'s images (their renames and new files).
fn sync_dirs(moved: &[(PathBuf, u64)]) {
    for dir in moved.iter().filter_map(|(p, _)| p.parent()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("havms-vmcopies-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_action_plans_its_save_and_a_report_saves_at_once() {
        let d = dir("plan");
        let mut c = Copies::new(d.join("copies"));
        assert_eq!(c.get("web"), &Record::Absent);
        let m = c
            .plan("web", Occasion::StartPrimary)
            .expect("a first generation");
        // Planned, not saved: the executor saves it before the VM boots.
        assert_eq!(c.get("web"), &Record::Known(m.clone()));
        c.reload("web");
        assert_eq!(c.get("web"), &Record::Absent, "nothing on disk yet");
        store::save(c.dir(), "web", &m).unwrap();
        c.reload("web");
        assert!(c.apply("web", Occasion::PeerSynced { acked: 3 }));
        assert!(
            !c.apply("web", Occasion::PeerSynced { acked: 4 }),
            "nothing new"
        );
        let saved = store::load(c.dir(), "web").unwrap().unwrap();
        assert!(!saved.alone);
        assert_eq!(c.get("web"), &Record::Known(saved));
    }

    #[test]
    fn a_copy_set_aside_keeps_every_byte_and_leaves_a_blank_of_the_same_size() {
        let d = dir("aside");
        let disk = d.join("web.img");
        std::fs::write(&disk, vec![7u8; 10_000]).unwrap();
        let mut c = Copies::new(d.join("copies"));
        let m = c.plan("web", Occasion::StartPrimary).unwrap();
        store::save(c.dir(), "web", &m).unwrap();
        let said = c
            .set_aside("web", &[disk.clone(), d.join("missing.img")], GenId(0x77))
            .unwrap();
        // A replica-to-be of the kept copy: never a source, never booted alone.
        let to_be = c.get("web").meta().cloned().unwrap();
        assert_eq!(to_be.history, vec![GenId(0x77)]);
        assert!(!to_be.primary && !to_be.consistent && to_be.syncing);
        assert!(crate::copies::lifecycle::boot_alone_refused(c.get("web")).is_some());
        c.reload("web");
        assert_eq!(c.get("web").meta(), Some(&to_be), "saved as such");
        // The blank image has the size; the old bytes are under the name the answer gives.
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 10_000);
        assert_eq!(std::fs::read(&disk).unwrap(), vec![0u8; 10_000]);
        let kept = said
            .trim_start_matches("kept as ")
            .split(", ")
            .map(PathBuf::from)
            .collect::<Vec<_>>();
        assert_eq!(kept.len(), 2, "{said}");
        assert_eq!(std::fs::read(&kept[0]).unwrap(), vec![7u8; 10_000]);
        let meta: CopyMeta =
            serde_json::from_str(&std::fs::read_to_string(&kept[1]).unwrap()).unwrap();
        assert_eq!(meta, m);
        assert!(kept[0].to_string_lossy().contains(&m.current().to_string()));
    }

    #[test]
    fn a_set_aside_whose_record_cannot_be_saved_puts_the_images_back() {
        let d = dir("unsaved");
        let disk = d.join("web.img");
        std::fs::write(&disk, b"data").unwrap();
        let mut c = Copies::new(d.join("copies"));
        let m = c.plan("web", Occasion::RunAlone).unwrap();
        store::save(c.dir(), "web", &m).unwrap();
        // The record's temporary file cannot be made: step 3 fails after the renames.
        std::fs::create_dir_all(c.dir().join("web.tmp")).unwrap();
        let e = c
            .set_aside("web", std::slice::from_ref(&disk), GenId(0x77))
            .unwrap_err();
        assert!(e.contains("web.json"), "{e}");
        assert_eq!(std::fs::read(&disk).unwrap(), b"data", "renamed back");
        c.reload("web");
        assert_eq!(c.get("web"), &Record::Known(m), "the old record kept");
        let left: Vec<String> = std::fs::read_dir(&d)
            .unwrap()
            .chain(std::fs::read_dir(d.join("copies")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!left.iter().any(|n| n.contains("set-aside")), "{left:?}");
    }

    #[test]
    fn a_set_aside_that_cannot_finish_undoes_itself() {
        let d = dir("undo");
        let disk = d.join("web.img");
        std::fs::write(&disk, b"data").unwrap();
        let mut c = Copies::new(d.join("copies"));
        let m = c.plan("web", Occasion::RunAlone).unwrap();
        store::save(c.dir(), "web", &m).unwrap();
        // A disk path whose metadata cannot be read (a file used as a directory).
        let plain = d.join("plain");
        std::fs::write(&plain, b"").unwrap();
        let bad = plain.join("sub.img");
        let e = c
            .set_aside("web", &[disk.clone(), bad], GenId(0x77))
            .unwrap_err();
        assert!(e.contains("sub.img"), "{e}");
        assert_eq!(std::fs::read(&disk).unwrap(), b"data");
        assert_eq!(c.get("web"), &Record::Known(m.clone()));
        c.reload("web");
        assert_eq!(c.get("web"), &Record::Known(m), "the metadata put back");
        let names = |dir: &Path| -> Vec<String> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        let mut left = names(&d);
        left.extend(names(&d.join("copies")));
        assert!(!left.iter().any(|n| n.contains("set-aside")), "{left:?}");
        assert!(c.failed_recently("web"));
    }
}
