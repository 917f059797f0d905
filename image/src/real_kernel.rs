//! Tests that check our readers against the real Debian kernel get it the way the image build does:
//! downloaded once into the workspace's cache (`target/havms/cache`) by [`crate::fetch`]. A machine that
//! cannot download it fails these tests with apt's reason instead of skipping them.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::fetch::{self, Fetcher, Kernel};

/// The unpacked `linux-image-amd64` kernel, fetched on first use.
pub fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/havms/cache");
        let fetcher = Fetcher::new(cache);
        let package = fetcher.kernel_package().unwrap_or_else(|e| {
            panic!("cannot resolve the Debian kernel package for this test: {e}")
        });
        let fetched = fetcher
            .fetch(&package)
            .unwrap_or_else(|e| panic!("cannot fetch {package} for this test: {e}"));
        fetch::kernel(&fetched).unwrap_or_else(|e| panic!("{package}: {e}"))
    })
}
