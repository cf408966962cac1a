//! weft system tests and the deterministic mesh simulation.

pub mod netns;
pub mod sim;
