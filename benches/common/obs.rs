//! Owned copies of observations, for benches that keep one across environment steps.

/// An observation as an owned vector.
pub trait ToOwnedF32 {
    /// The observation's floats (CartPole observes floats).
    fn to_owned_f32(&self) -> Vec<f32>;
}

impl ToOwnedF32 for tune::rl::env::Obs<'_> {
    fn to_owned_f32(&self) -> Vec<f32> {
        match self {
            tune::rl::env::Obs::F32(x) => x.to_vec(),
            other => unreachable!("CartPole observes floats, got {other:?}"),
        }
    }
}
