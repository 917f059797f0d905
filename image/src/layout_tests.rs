//! The node tree against the contract in docs/node-runtime.md, built from a fixture kernel tree
//! and the host's static busybox (a prerequisite xtask installs), and the shipped list itself.

use std::path::PathBuf;

use super::*;
use crate::modinfo::tests::fake_ko;
use crate::tree::Node;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_modules_list_parses() {
    let entries = modlist::read(&manifest_dir().join("modules.list")).expect("valid list");
    let kvm = entries
        .iter()
        .find(|e| e.name == "kvm")
        .expect("kvm listed");
    assert!(kvm.params.contains(&"ignore_msrs=1".to_string()));
    assert!(entries.iter().any(|e| e.name == modlist::KVM_VENDOR));
}

/// The shipped list resolves against the real Debian kernel the image is built from.
#[test]
fn shipped_modules_list_resolves_against_real_kernel() {
    let list = manifest_dir().join("modules.list");
    let entries = modlist::read(&list).expect("valid list");
    let index =
        ModuleIndex::scan(&crate::real_kernel::kernel().modules_dir).expect("scan real tree");
    let closure = modules::resolve(&index, &entries, &list).expect("every name resolves");
    for needed in [
        "kernel/arch/x86/kvm/kvm-amd.ko",
        "kernel/arch/x86/kvm/kvm-intel.ko",
    ] {
        assert!(closure.modules.contains_key(needed), "{needed}");
    }
    assert_eq!(
        closure.modules["kernel/net/bridge/bridge.ko"],
        vec!["kernel/net/802/stp.ko", "kernel/net/llc/llc.ko"]
    );
}

#[test]
fn node_tree_holds_what_the_contract_says() {
    // Any static x86-64 executable will do as a stand-in for our binaries; busybox-static is one.
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox (Debian package busybox-static) is needed by this test"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let kdir = dir.path().join("lib/modules/6.1.0-9-amd64");
    for (rel, deps, name) in [
        ("kernel/net/bridge/bridge.ko", "llc,stp", "bridge"),
        ("kernel/net/802/stp.ko", "llc", "stp"),
        ("kernel/net/llc/llc.ko", "", "llc"),
        ("kernel/drivers/net/tun.ko", "", "tun"),
    ] {
        let path = kdir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let fields = [format!("depends={deps}"), format!("name={name}")];
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        std::fs::write(&path, fake_ko(&fields)).expect("write ko");
    }
    std::fs::write(
        kdir.join("modules.builtin"),
        "kernel/net/packet/af_packet.ko\n",
    )
    .expect("builtin");
    let list = dir.path().join("modules.list");
    std::fs::write(&list, "tun\nbridge\naf_packet\n").expect("list");
    let kernel = Kernel {
        release: "6.1.0-9-amd64".into(),
        vmlinuz: dir.path().join("vmlinuz"),
        modules_dir: kdir,
    };
    let script = manifest_dir().join("udhcpc.script");
    let node = node_tree(&NodeInputs {
        init: busybox,
        havmsd: busybox,
        havms: busybox,
        havms_vm: busybox,
        havms_remote: busybox,
        busybox,
        kernel: &kernel,
        modules_list: &list,
        udhcpc_script: &script,
    })
    .expect("node tree");
    assert_eq!(node.modules, 4);
    assert_eq!(node.builtin, vec!["af_packet"]);
    assert!(node.applets > 100, "{} applets", node.applets);

    let entries: std::collections::BTreeMap<&str, &Node> = node.tree.entries().collect();
    for path in [
        "init",
        "usr/bin/havmsd",
        "usr/bin/havms",
        "usr/bin/havms-vm",
        "usr/bin/havms-remote",
        "bin/busybox",
        "etc/havms/modules.list",
        "usr/share/udhcpc/default.script",
        "lib/modules/6.1.0-9-amd64/kernel/net/bridge/bridge.ko",
        "lib/modules/6.1.0-9-amd64/modules.builtin",
    ] {
        assert!(
            matches!(entries.get(path), Some(Node::File { .. })),
            "{path}"
        );
    }
    for path in ["proc", "sys", "dev", "run", "tmp", "var/lib/havms", "root"] {
        assert!(
            matches!(entries.get(path), Some(Node::Dir { .. })),
            "{path}"
        );
    }
    assert_eq!(
        entries.get("dev/console"),
        Some(&&Node::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1
        })
    );
    assert_eq!(
        entries.get("dev/null"),
        Some(&&Node::CharDev {
            mode: 0o666,
            major: 1,
            minor: 3
        })
    );
    assert!(matches!(
        entries.get("bin/sh"),
        Some(Node::Symlink { target }) if target == "/bin/busybox"
    ));
    assert!(
        !entries.contains_key("sbin/init"),
        "busybox init must not be linked"
    );
    match entries.get("lib/modules/6.1.0-9-amd64/modules.dep") {
        Some(Node::File {
            contents: Contents::Bytes(b),
            ..
        }) => assert_eq!(
            String::from_utf8_lossy(b),
            "kernel/drivers/net/tun.ko:\n\
             kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
             kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/llc/llc.ko:\n"
        ),
        other => panic!("modules.dep: {other:?}"),
    }
}

#[test]
fn dynamic_binary_is_refused() {
    if cfg!(target_feature = "crt-static") {
        return; // the test binary is itself static then: nothing dynamic at hand
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let kdir = dir.path().join("k");
    std::fs::create_dir_all(kdir.join("kernel")).expect("mkdir");
    let list = dir.path().join("modules.list");
    std::fs::write(&list, "").expect("list");
    let kernel = Kernel {
        release: "x".into(),
        vmlinuz: dir.path().join("vmlinuz"),
        modules_dir: kdir,
    };
    let exe = std::env::current_exe().expect("test binary");
    let err = node_tree(&NodeInputs {
        init: &exe,
        havmsd: &exe,
        havms: &exe,
        havms_vm: &exe,
        havms_remote: &exe,
        busybox: Path::new("/bin/busybox"),
        kernel: &kernel,
        modules_list: &list,
        udhcpc_script: &manifest_dir().join("udhcpc.script"),
    })
    .expect_err("the test binary is dynamically linked");
    assert!(err.to_string().contains("dynamically linked"), "{err}");
}
