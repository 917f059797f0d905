//! havms-config
