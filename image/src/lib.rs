//! havms-image
