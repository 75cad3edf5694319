use imagegate_core::profile::SafetyThresholds;
use imagegate_core::SafetyAction;

/// The action for an NSFW score under a profile's thresholds: at or above `block_at`
/// block, at or above `blur_at` blur, otherwise allow.
///
/// A score that is not a number (a broken model output) blocks: the stage fails closed.
pub fn decide(score: f32, thresholds: SafetyThresholds) -> SafetyAction {
    if score.is_nan() || score >= thresholds.block_at {
        SafetyAction::Block
    } else if score >= thresholds.blur_at {
        SafetyAction::Blur
    } else {
        SafetyAction::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: SafetyThresholds = SafetyThresholds {
        blur_at: 0.2,
        block_at: 0.8,
    };

    #[test]
    fn below_blur_threshold_is_allowed() {
        assert_eq!(decide(0.0, DEFAULTS), SafetyAction::Allow);
        assert_eq!(decide(0.199, DEFAULTS), SafetyAction::Allow);
    }

    #[test]
    fn thresholds_are_inclusive() {
        assert_eq!(decide(0.2, DEFAULTS), SafetyAction::Blur);
        assert_eq!(decide(0.5, DEFAULTS), SafetyAction::Blur);
        assert_eq!(decide(0.8, DEFAULTS), SafetyAction::Block);
        assert_eq!(decide(1.0, DEFAULTS), SafetyAction::Block);
    }

    #[test]
    fn block_wins_when_thresholds_coincide() {
        let t = SafetyThresholds {
            blur_at: 0.5,
            block_at: 0.5,
        };
        assert_eq!(decide(0.5, t), SafetyAction::Block);
    }

    #[test]
    fn zero_block_threshold_blocks_everything() {
        let t = SafetyThresholds {
            blur_at: 0.0,
            block_at: 0.0,
        };
        assert_eq!(decide(0.0, t), SafetyAction::Block);
    }

    #[test]
    fn thresholds_above_one_never_act() {
        let t = SafetyThresholds {
            blur_at: 1.1,
            block_at: 1.1,
        };
        assert_eq!(decide(1.0, t), SafetyAction::Allow);
    }

    #[test]
    fn nan_score_blocks() {
        assert_eq!(decide(f32::NAN, DEFAULTS), SafetyAction::Block);
    }
}
