//! Small commands that are not a domain of their own: init, check, demo, key rotate, generate.

pub mod check;
pub mod demo;
pub mod generate;
pub mod init;
pub mod key;
