//! Dynamic loss scaling, for pretraining in f16. With `--precision f16` the parameters, the
//! optimizer's state and the EMA target stay f32 and the networks compute in f16 (as bf16's
//! mixed precision), but f16 keeps only 5 exponent bits: gradients of activations below about
//! 6e-8 flush to zero. So the loss is multiplied by a scale before the backward pass and the
//! gradients are divided by it after (`train_step_with`). A step whose gradients are not
//! finite (the scaled backward overflowed f16's 65,504) is skipped and the scale halved; after
//! [`LossScale::GROWTH_INTERVAL`] steps in a row without one it doubles. The constants are
//! PyTorch's `GradScaler` defaults. The state is part of a run's checkpoint, so a resumed run
//! takes the same steps as an uninterrupted one.

/// The loss scale and how many steps in a row trained with it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Steps since the scale last changed.
    pub good_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        Self { scale: Self::INITIAL, good_steps: 0 }
    }
}

impl LossScale {
    pub const INITIAL: f64 = 65536.0;
    pub const GROWTH_INTERVAL: u32 = 2000;

    /// The state after a step whose gradients were finite and trained (`applied`), or were
    /// not and were skipped.
    #[must_use]
    pub fn after(self, applied: bool) -> Self {
        if !applied {
            return Self { scale: self.scale / 2.0, good_steps: 0 };
        }
        match self.good_steps + 1 {
            n if n >= Self::GROWTH_INTERVAL => Self { scale: self.scale * 2.0, good_steps: 0 },
            n => Self { good_steps: n, ..self },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflow_halves_the_scale_and_a_run_of_good_steps_doubles_it() {
        let s = LossScale::default();
        assert_eq!(s.after(false), LossScale { scale: 32768.0, good_steps: 0 });
        let mut t = LossScale { scale: 8.0, good_steps: 0 };
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            t = t.after(true);
        }
        assert_eq!(t, LossScale { scale: 8.0, good_steps: LossScale::GROWTH_INTERVAL - 1 });
        assert_eq!(t.after(true), LossScale { scale: 16.0, good_steps: 0 });
        // An overflow also restarts the count.
        assert_eq!(t.after(false), LossScale { scale: 4.0, good_steps: 0 });
    }
}
