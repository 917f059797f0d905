//! havms-supervisor
