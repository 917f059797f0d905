//! havms-qemu-tests
