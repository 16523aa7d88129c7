use super::*;

#[test]
fn a_periodic_view_keeps_its_batch_open_for_the_period_and_others_close_when_idle() {
    assert_eq!(batch_timing(None), (BATCH_LINGER_MAX, Some(BATCH_IDLE_GAP)));
    assert_eq!(
        batch_timing(Some(5_000_000)),
        (Duration::from_secs(5), None),
        "no idle gap: the batch waits for the period"
    );
}
