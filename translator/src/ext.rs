//! The registry of xtables extensions the kernel offers: per name and revision, the sizes
//! `xt_check_match`/`xt_check_target` enforce, the user-visible payload size
//! (`usersize`, the rest is zeroed when entries are read back), and the table, hook and
//! protocol restrictions; plus the checkentry of every extension bpfipt models.
//!
//! Extensions it does not model are left to the kernel (`check::ExtVerdict::Unmodeled`).

use crate::abi::{Family, XtObj};
use crate::check::{self, ExtCheck, ExtCtx, ExtVerdict};

/// The registry as an [`ExtCheck`].
pub struct Registry;

impl ExtCheck for Registry {
    fn check_match(&self, _ctx: &ExtCtx<'_>, _m: &XtObj<'_>) -> ExtVerdict {
        ExtVerdict::Unmodeled
    }

    fn check_target(&self, _ctx: &ExtCtx<'_>, t: &XtObj<'_>) -> ExtVerdict {
        check::builtin_target(t).unwrap_or(ExtVerdict::Unmodeled)
    }
}

/// The number of payload bytes the kernel copies back for an extension (`usersize`, or the
/// full size when the extension has no kernel-private tail). `None` when unknown: the stored
/// payload is returned whole.
pub fn usersize(_family: Family, _is_target: bool, _name: &[u8], _revision: u8) -> Option<usize> {
    None
}
