//! havms-vmm
