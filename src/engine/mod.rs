//! The staged state machine: playbooks (what to run), checkpoints (what has run), and the runner.
//!
//! A run writes `running` to its checkpoint *before* a stage's side effects and `succeeded` plus
//! the stage's outputs after, so a crash at any point leaves a checkpoint that says exactly which
//! stage may have been half-done. Destructive sub-steps (a reset per node, the bootstrap) are
//! journaled one by one inside the stage's outputs.

pub mod checkpoint;
pub mod playbook;
pub mod run;
pub mod stage;
