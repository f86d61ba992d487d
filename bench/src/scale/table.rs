//! A curve's Markdown: its heading, what it measures, one row per point and, per series, the
//! growth of each per-unit figure from the smallest N to the largest. Formatting only.

use std::fmt::Write as _;

use super::{Col, Curve, Figures, Growth, PointResult, FLAG};

/// A figure with `digits` decimals, or `–` when the point has none.
fn cell(f: &Figures, col: &Col) -> String {
    match f.get(col.key) {
        Some(v) if v.is_finite() => format!("{v:.*}", col.digits),
        _ => "–".into(),
    }
}

/// One progress line's worth of a point's figures.
pub fn brief(curve: &Curve, f: &Figures) -> String {
    curve
        .cols
        .iter()
        .filter(|c| c.growth != Growth::None)
        .map(|c| format!("{} {}", c.header, cell(f, c)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `last / first` of `col` over the points of one series, formatted and flagged.
fn growth(points: &[&Figures], col: &Col) -> String {
    let (Some(first), Some(last)) = (
        points.first().and_then(|f| f.get(col.key)),
        points.last().and_then(|f| f.get(col.key)),
    ) else {
        return "–".into();
    };
    if points.len() < 2 || *first <= 0.0 || !last.is_finite() {
        return "–".into();
    }
    let ratio = last / first;
    if col.growth == Growth::Cost && ratio > FLAG {
        format!("**×{ratio:.2} (> {FLAG})**")
    } else {
        format!("×{ratio:.2}")
    }
}

/// The section of one curve.
pub fn section(curve: &Curve, results: &[(&str, u64, PointResult)]) -> String {
    let mut out = format!("\n## {}\n\n{}\n\n", curve.title, curve.what);
    let several = curve.series.len() > 1;
    let mut head = String::from("|");
    if several {
        head.push_str(" series |");
    }
    let _ = write!(head, " {} |", curve.n_header);
    for c in curve.cols {
        let _ = write!(head, " {} |", c.header);
    }
    let rule: String = "|---".repeat(curve.cols.len() + 1 + usize::from(several)) + "|";
    let _ = writeln!(out, "{head}\n{rule}");
    for &series in curve.series {
        let mut ok: Vec<&Figures> = Vec::new();
        let mut sizes = Vec::new();
        for (s, n, r) in results.iter().filter(|(s, ..)| *s == series) {
            let mut row = String::from("|");
            if several {
                let _ = write!(row, " {s} |");
            }
            let _ = write!(row, " {n} |");
            match r {
                Ok(f) => {
                    for c in curve.cols {
                        let _ = write!(row, " {} |", cell(f, c));
                    }
                    ok.push(f);
                    sizes.push(*n);
                }
                Err(e) => {
                    let _ = write!(row, " FAILED: {} |", e.replace('|', "/"));
                    row.push_str(&"  |".repeat(curve.cols.len().saturating_sub(1)));
                }
            }
            let _ = writeln!(out, "{row}");
        }
        let mut row = String::from("|");
        if several {
            let _ = write!(row, " {series} |");
        }
        match (sizes.first(), sizes.last()) {
            (Some(a), Some(b)) if sizes.len() > 1 => {
                let _ = write!(row, " *growth {a} → {b}* |");
            }
            _ => row.push_str(" *growth* |"),
        }
        for c in curve.cols {
            let g = match c.growth {
                Growth::None => String::new(),
                _ => growth(&ok, c),
            };
            let _ = write!(row, " {g} |");
        }
        let _ = writeln!(out, "{row}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: &[Col] = &[
        Col {
            key: "total",
            header: "total s",
            digits: 1,
            growth: Growth::None,
        },
        Col {
            key: "cost",
            header: "ms per call",
            digits: 2,
            growth: Growth::Cost,
        },
    ];

    fn figures(total: f64, cost: f64) -> Figures {
        [("total".to_owned(), total), ("cost".to_owned(), cost)].into()
    }

    #[test]
    fn rows_growth_and_flags() {
        let curve = Curve {
            key: "t",
            title: "T",
            what: "what",
            n_header: "N",
            series: &["a", "b"],
            ns: vec![1, 10],
            cols: COLS,
        };
        let results = vec![
            ("a", 1, Ok(figures(1.0, 2.0))),
            ("a", 10, Ok(figures(10.0, 2.2))),
            ("b", 1, Ok(figures(1.0, 1.0))),
            ("b", 10, Err("boom | bang".to_owned())),
        ];
        let s = section(&curve, &results);
        assert!(s.contains("| a | 10 | 10.0 | 2.20 |"), "{s}");
        assert!(s.contains("| a | *growth 1 → 10* |  | ×1.10 |"), "{s}");
        assert!(s.contains("| b | 10 | FAILED: boom / bang |  |"), "{s}");
        assert!(s.contains("| b | *growth* |  | – |"), "{s}");
        let flagged = vec![
            ("a", 1, Ok(figures(1.0, 1.0))),
            ("a", 10, Ok(figures(1.0, 3.0))),
        ];
        let curve = Curve {
            series: &["a"],
            ..curve
        };
        assert!(section(&curve, &flagged).contains("**×3.00 (> 1.5)**"));
    }
}
