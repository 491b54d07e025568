//! The tree restorer's rules as crdump runs them, before it writes a tree
//! or kills it: the plan of the manifest it is about to publish must be
//! possible. One source: [`super::plan::plan`] itself, on the manifest
//! alone.

use image_manifest::Manifest;

use super::plan::{plan, PlanInput};

/// Why `crrestore-tree` would refuse the tree `manifest` describes,
/// whatever the machine it is restored on: the plan in a new pid namespace
/// (where every pid is free and no process outside the tree is seen), the
/// strictest shape the restorer builds.
pub fn restorable(manifest: &Manifest) -> Result<(), String> {
    let input = PlanInput {
        manifest,
        pidns: true,
        root_stdio: &[],
        caller_tty: false,
        in_use: &|_| false,
        caller: None,
    };
    plan(&input).map(drop).map_err(|e| e.to_string())
}
