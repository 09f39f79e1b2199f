//! placeholder
#[derive(Default)]
pub(crate) struct TierWatch;
