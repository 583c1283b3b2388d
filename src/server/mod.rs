//! server shell (helper)
