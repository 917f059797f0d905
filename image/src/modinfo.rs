//! Reads what a kernel module says about itself: the NUL-separated `key=value` strings of its
//! ELF `.modinfo` section, of which we need `name=` and `depends=`.

use std::path::Path;

use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSection};

use crate::error::{Error, Result};

/// The fields of `.modinfo` the image builder uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, the module's own name (always `_` form in kernel builds).
    pub name: Option<String>,
    /// `depends=`, the modules whose symbols this one uses, in the order written.
    pub depends: Vec<String>,
}

/// Parses the raw bytes of a `.modinfo` section.
pub fn parse(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for field in section.split(|b| *b == 0) {
        let field = String::from_utf8_lossy(field);
        if let Some(value) = field.strip_prefix("depends=") {
            info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string),
            );
        } else if let Some(value) = field.strip_prefix("name=") {
            info.name = Some(value.to_string());
        }
    }
    info
}

/// Reads `.modinfo` from the bytes of a `.ko` file; `path` only names it in errors.
pub fn from_elf(data: &[u8], path: &Path) -> Result<ModInfo> {
    let bad = |reason: String| Error::Module {
        path: path.to_path_buf(),
        reason,
    };
    let elf = ElfFile64::<Endianness>::parse(data)
        .map_err(|e| bad(format!("not a 64-bit ELF object: {e}")))?;
    let section = elf
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo section".into()))?;
    let bytes = section
        .data()
        .map_err(|e| bad(format!("cannot read .modinfo: {e}")))?;
    Ok(parse(bytes))
}

/// Reads `.modinfo` from a module file on disk. Compressed modules are refused by name: the
/// kernels we package ship plain `.ko` files, and a silent misparse would drop dependencies.
pub fn read(path: &Path) -> Result<ModInfo> {
    if path.extension().is_some_and(|ext| ext != "ko") {
        return Err(Error::Module {
            path: path.to_path_buf(),
            reason: "compressed modules are not supported (expected a plain .ko)".into(),
        });
    }
    let data = std::fs::read(path).map_err(Error::io(path))?;
    from_elf(&data, path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use object::write;

    /// A minimal relocatable ELF, like a `.ko`, whose `.modinfo` holds `fields`.
    pub(crate) fn fake_ko(fields: &[&str]) -> Vec<u8> {
        let mut obj = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let section = obj.add_section(
            Vec::new(),
            b".modinfo".to_vec(),
            object::SectionKind::ReadOnlyString,
        );
        let mut data = Vec::new();
        for f in fields {
            data.extend_from_slice(f.as_bytes());
            data.push(0);
        }
        obj.append_section_data(section, &data, 1);
        obj.write().expect("writing an in-memory ELF cannot fail")
    }

    #[test]
    fn parses_depends_and_name() {
        let info =
            parse(b"license=GPL\0depends=kvm,ccp\0retpoline=Y\0name=kvm_amd\0vermagic=6.1\0");
        assert_eq!(info.name.as_deref(), Some("kvm_amd"));
        assert_eq!(info.depends, vec!["kvm", "ccp"]);
    }

    #[test]
    fn empty_depends_means_none() {
        let info = parse(b"depends=\0name=tun\0");
        assert!(info.depends.is_empty());
        assert_eq!(info.name.as_deref(), Some("tun"));
    }

    #[test]
    fn reads_section_from_elf() {
        let ko = fake_ko(&["license=GPL", "depends=llc,stp", "name=bridge"]);
        let info = from_elf(&ko, Path::new("bridge.ko")).expect("valid ELF");
        assert_eq!(info.depends, vec!["llc", "stp"]);
        assert_eq!(info.name.as_deref(), Some("bridge"));
    }

    #[test]
    fn not_elf_is_an_error_naming_the_file() {
        let err = from_elf(b"hello", Path::new("x/bad.ko")).expect_err("not ELF");
        assert!(err.to_string().starts_with("x/bad.ko: "), "{err}");
    }

    #[test]
    fn missing_section_is_an_error() {
        let obj = write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let data = obj.write().expect("in-memory ELF");
        let err = from_elf(&data, Path::new("plain.o")).expect_err("no .modinfo");
        assert!(err.to_string().contains("no .modinfo"), "{err}");
    }

    /// The fixture tests above carry the coverage; this one checks the reader against a real module.
    #[test]
    fn real_debian_module() {
        let path = crate::real_kernel::kernel()
            .modules_dir
            .join("kernel/net/bridge/bridge.ko");
        let info = read(&path).expect("real module parses");
        assert_eq!(info.name.as_deref(), Some("bridge"));
        assert!(info.depends.contains(&"stp".to_string()), "{info:?}");
    }
}
