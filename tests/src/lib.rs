//! weft system tests and the deterministic mesh simulation.

pub mod capture;
pub mod netns;
pub mod sim;
