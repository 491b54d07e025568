//! One dump routine per kind of kernel object an fd can hold.

pub mod terminal;
