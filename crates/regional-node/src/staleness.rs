//! Bounded staleness: a read answered only when every view it names is at most so far behind
//! its source, as the central tier vouched (`ViewPosition::staleness_ms`).

use std::time::Duration;

use meridian_proto::v1::ViewPosition;

/// How long a read with `max_staleness_ms` waits at most for its views to be fresh enough
/// (`max_staleness_wait_ms` chooses less or more, up to [`WAIT_MAX_MS`]).
pub const WAIT_DEFAULT_MS: u64 = 2_000;
pub const WAIT_MAX_MS: u64 = 30_000;
/// How often such a read looks again.
pub const RETRY: Duration = Duration::from_millis(100);

/// The views a statement names (whole words, any case: a view named only in a string
/// literal counts too, which only makes the check stricter).
fn views_named<'a>(sql: &str, positions: &'a [ViewPosition]) -> Vec<&'a ViewPosition> {
    let words: std::collections::HashSet<String> = sql
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    positions
        .iter()
        .filter(|p| words.contains(&p.view.to_lowercase()))
        .collect()
}

/// `bounded_staleness`: why the answer is too stale for `max_ms` (`Ok` when every view the
/// statement names is at most that far behind its source). A view nobody vouched for yet is
/// too stale.
pub fn check(sql: &str, positions: &[ViewPosition], max_ms: i64) -> Result<(), String> {
    for p in views_named(sql, positions) {
        if p.staleness_ms < 0 {
            return Err(format!(
                "view '{}' has not been vouched fresh yet (no word from the central tier)",
                p.view
            ));
        }
        if p.staleness_ms > max_ms {
            return Err(format!(
                "view '{}' is {} ms behind its source, more than max_staleness_ms={max_ms}",
                p.view, p.staleness_ms
            ));
        }
    }
    Ok(())
}

/// How long a read waits at most: the request's wait (`None`: the default), capped.
pub fn wait_ms(requested: Option<u64>) -> u64 {
    requested.unwrap_or(WAIT_DEFAULT_MS).min(WAIT_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_staleness_looks_at_the_views_a_statement_names() {
        let p = |view: &str, staleness_ms: i64| ViewPosition {
            view: view.into(),
            staleness_ms,
            ..Default::default()
        };
        let positions = [
            p("orders_by_day", 300),
            p("totals", 5_000),
            p("fresh_new", -1),
        ];
        assert_eq!(
            check("SELECT * FROM Orders_By_Day WHERE x > 1", &positions, 500),
            Ok(())
        );
        let why = check(
            "SELECT * FROM orders_by_day JOIN totals USING (k)",
            &positions,
            500,
        )
        .expect_err("totals is too stale");
        assert!(why.contains("'totals' is 5000 ms behind"), "{why}");
        assert!(check("SELECT 1 FROM fresh_new", &positions, 60_000)
            .is_err_and(|w| w.contains("not been vouched")));
        // Names inside other words do not count.
        assert_eq!(
            check("SELECT totals_x FROM orders_by_day", &positions, 500),
            Ok(())
        );
    }
}
