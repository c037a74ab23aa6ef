//! Small commands that are not a domain of their own: init, check, demo.

pub mod check;
pub mod demo;
pub mod init;
