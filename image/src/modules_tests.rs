//! Module index, closure and `modules.dep` tests on a fixture tree of tiny ELF `.ko` files.

use super::*;
use crate::modinfo::tests::fake_ko;
use crate::modlist::parse;

/// Writes `lib/modules/KVER`-like fixture: (relative path, depends=) pairs, and builtins.
fn tree(modules: &[(&str, &str)], builtin: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (rel, depends) in modules {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        let name = path
            .file_stem()
            .expect("stem")
            .to_string_lossy()
            .replace('-', "_");
        let ko = fake_ko(&[
            "license=GPL",
            &format!("depends={depends}"),
            &format!("name={name}"),
        ]);
        std::fs::write(path, ko).expect("write ko");
    }
    std::fs::write(dir.path().join("modules.builtin"), builtin.join("\n")).expect("builtin");
    dir
}

fn fixture() -> tempfile::TempDir {
    tree(
        &[
            ("kernel/arch/x86/kvm/kvm.ko", "irqbypass"),
            ("kernel/virt/lib/irqbypass.ko", ""),
            ("kernel/arch/x86/kvm/kvm-amd.ko", "kvm,ccp"),
            ("kernel/arch/x86/kvm/kvm-intel.ko", "kvm"),
            ("kernel/drivers/crypto/ccp/ccp.ko", ""),
            ("kernel/net/bridge/bridge.ko", "llc,stp"),
            ("kernel/net/802/stp.ko", "llc"),
            ("kernel/net/llc/llc.ko", ""),
            ("kernel/fs/nls/nls_iso8859-1.ko", ""),
            ("kernel/drivers/net/tun.ko", "af_packet_fake_builtin"),
        ],
        &[
            "kernel/net/packet/af_packet.ko",
            "kernel/fake/af_packet_fake_builtin.ko",
        ],
    )
}

fn list(text: &str) -> Vec<ModuleEntry> {
    parse(text, Path::new("modules.list")).expect("valid list")
}

#[test]
fn index_treats_dash_and_underscore_alike() {
    let dir = fixture();
    let index = ModuleIndex::scan(dir.path()).expect("scan");
    assert_eq!(index.len(), 10);
    assert_eq!(
        index.lookup("nls_iso8859_1"),
        Some("kernel/fs/nls/nls_iso8859-1.ko")
    );
    assert_eq!(
        index.lookup("kvm_amd"),
        Some("kernel/arch/x86/kvm/kvm-amd.ko")
    );
    assert!(index.is_builtin("af-packet"));
    assert!(!index.is_builtin("tun"));
}

#[test]
fn closure_is_transitive_and_ordered_like_depmod() {
    let dir = fixture();
    let index = ModuleIndex::scan(dir.path()).expect("scan");
    let closure = resolve(&index, &list("bridge\n"), Path::new("modules.list")).expect("resolve");
    let got: Vec<_> = closure.modules.keys().cloned().collect();
    assert_eq!(
        got,
        vec![
            "kernel/net/802/stp.ko",
            "kernel/net/bridge/bridge.ko",
            "kernel/net/llc/llc.ko"
        ]
    );
    // stp needs llc, so llc comes after stp (loaded first when read from the end).
    assert_eq!(
        closure.modules["kernel/net/bridge/bridge.ko"],
        vec!["kernel/net/802/stp.ko", "kernel/net/llc/llc.ko"]
    );
    assert!(closure.modules["kernel/net/llc/llc.ko"].is_empty());
}

#[test]
fn kvm_vendor_brings_both_vendors_and_their_deps() {
    let dir = fixture();
    let index = ModuleIndex::scan(dir.path()).expect("scan");
    let closure = resolve(
        &index,
        &list("kvm ignore_msrs=1\nkvm-vendor\n"),
        Path::new("modules.list"),
    )
    .expect("resolve");
    for m in [
        "kernel/arch/x86/kvm/kvm.ko",
        "kernel/arch/x86/kvm/kvm-amd.ko",
        "kernel/arch/x86/kvm/kvm-intel.ko",
        "kernel/drivers/crypto/ccp/ccp.ko",
        "kernel/virt/lib/irqbypass.ko",
    ] {
        assert!(closure.modules.contains_key(m), "{m} missing: {closure:?}");
    }
    assert_eq!(closure.modules.len(), 5);
    let amd = &closure.modules["kernel/arch/x86/kvm/kvm-amd.ko"];
    let pos = |m: &str| amd.iter().position(|x| x == m).expect("dep listed");
    // irqbypass is kvm's dependency: it must come after kvm.
    assert!(pos("kernel/arch/x86/kvm/kvm.ko") < pos("kernel/virt/lib/irqbypass.ko"));
    assert_eq!(amd.len(), 3);
}

#[test]
fn builtin_names_and_builtin_dependencies_are_fine() {
    let dir = fixture();
    let index = ModuleIndex::scan(dir.path()).expect("scan");
    let closure =
        resolve(&index, &list("af_packet\ntun\n"), Path::new("modules.list")).expect("resolve");
    assert_eq!(closure.builtin, vec!["af_packet"]);
    assert_eq!(
        closure.modules.keys().collect::<Vec<_>>(),
        vec!["kernel/drivers/net/tun.ko"]
    );
    assert!(closure.modules["kernel/drivers/net/tun.ko"].is_empty());
}

#[test]
fn unknown_name_names_list_file_and_line() {
    let dir = fixture();
    let index = ModuleIndex::scan(dir.path()).expect("scan");
    let err = resolve(
        &index,
        &list("tun\n# c\nno_such_driver\n"),
        Path::new("image/modules.list"),
    )
    .expect_err("unknown module");
    let msg = err.to_string();
    assert!(msg.starts_with("image/modules.list:3: "), "{msg}");
    assert!(msg.contains("no_such_driver"), "{msg}");
}

#[test]
fn missing_dependency_is_an_error() {
    let dir = tree(&[("kernel/a.ko", "b")], &[]);
    let index = ModuleIndex::scan(dir.path()).expect("scan");
    let err = resolve(&index, &list("a\n"), Path::new("m")).expect_err("b missing");
    assert!(err.to_string().contains("depends on b"), "{err}");
}

#[test]
fn cycle_is_an_error() {
    let dir = tree(&[("kernel/a.ko", "b"), ("kernel/b.ko", "a")], &[]);
    let index = ModuleIndex::scan(dir.path()).expect("scan");
    let err = resolve(&index, &list("a\n"), Path::new("m")).expect_err("cycle");
    assert!(err.to_string().contains("cycle"), "{err}");
}

#[test]
fn modules_dep_format() {
    let dir = fixture();
    let index = ModuleIndex::scan(dir.path()).expect("scan");
    let closure = resolve(&index, &list("bridge\ntun\n"), Path::new("m")).expect("resolve");
    assert_eq!(
        modules_dep(&closure),
        "kernel/drivers/net/tun.ko:\n\
         kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
         kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
         kernel/net/llc/llc.ko:\n"
    );
}
