//! talos
