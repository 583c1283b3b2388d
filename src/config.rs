//! config (server shell helper)
