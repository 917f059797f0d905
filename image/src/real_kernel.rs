//! Tests that check our readers against the real Debian kernel get it the way the image build does:
//! downloaded once into the workspace's cache (`target/havms/cache`) by [`crate::fetch`]. A machine that
//! cannot download it fails these tests with apt's reason instead of skipping them.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::fetch::{Fetcher, Kernel};

/// The unpacked `linux-image-amd64` kernel, fetched on first use.
pub fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/havms/cache");
        Fetcher::new(cache)
            .kernel()
            .unwrap_or_else(|e| panic!("cannot fetch the Debian kernel for this test: {e}"))
    })
}
