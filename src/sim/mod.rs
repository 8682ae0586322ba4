//! A simulated Talos cluster for tests and `talos-dr demo`. Real runs never touch it.
