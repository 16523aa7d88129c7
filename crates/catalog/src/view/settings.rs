//! A view's `SETTINGS`: the regions it is assigned to, the allowed lateness of its windows
//! and how long a closed window stays.

use super::expr::Planner;
use super::*;

/// The regions a view names, its windows' allowed lateness and closed windows' retention
/// (each duration with where it was written).
pub(super) struct Settings {
    pub(super) regions: Option<Vec<String>>,
    pub(super) lateness: Option<(i64, Span)>,
    pub(super) retention: Option<(i64, Span)>,
}

/// Reads the query's `SETTINGS`; an unknown setting or a bad value is refused with its place.
pub(super) fn view_settings(p: &Planner, q: &Query) -> Result<Settings, SqlError> {
    let mut regions = None;
    let mut lateness: Option<(i64, Span)> = None;
    let mut retention: Option<(i64, Span)> = None;
    for setting in q.settings.iter().flatten() {
        let key = setting.key.value.to_ascii_lowercase();
        let value = match &setting.value {
            Expr::Value(v) => match &v.value {
                SqlValue::SingleQuotedString(s) => s.clone(),
                _ => {
                    return Err(p.err(
                        setting.value.span(),
                        format!("setting '{key}' takes a quoted value"),
                    ))
                }
            },
            other => {
                return Err(p.err(
                    other.span(),
                    format!("setting '{key}' takes a quoted value"),
                ))
            }
        };
        match key.as_str() {
            "regions" => {
                let list: Vec<String> = value
                    .split(',')
                    .map(|r| r.trim().to_string())
                    .filter(|r| !r.is_empty())
                    .collect();
                if list.is_empty() {
                    return Err(p.err(
                        setting.value.span(),
                        "regions must name at least one region",
                    ));
                }
                if let Some(bad) = list.iter().find(|r| !crate::defs::valid_region_name(r)) {
                    return Err(p.err(
                        setting.value.span(),
                        format!("'{bad}' is not a region name (letters, digits, '-' and '_')"),
                    ));
                }
                regions = Some(list);
            }
            "allowed_lateness" => {
                let Some(us) = duration_micros(&value) else {
                    return Err(p.err(setting.value.span(), format!("allowed_lateness '{value}': write a duration such as '30s', '5m' or '0s'")));
                };
                lateness = Some((us, setting.value.span()));
            }
            "window_retention" => {
                let Some(us) = duration_micros(&value) else {
                    return Err(p.err(setting.value.span(), format!("window_retention '{value}': write a duration such as '1h' or '30m'")));
                };
                retention = Some((us, setting.value.span()));
            }
            other => {
                return Err(p.err(
                    setting.key.span,
                    format!("unknown view setting '{other}'; supported: regions, allowed_lateness, window_retention"),
                ))
            }
        }
    }
    Ok(Settings {
        regions,
        lateness,
        retention,
    })
}
