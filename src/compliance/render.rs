//! CSV and HTML renditions of a signed report. Both name the signed JSON's `report_sha256`
//! and where to fetch it; neither is signed itself.

use std::fmt::Write;

use super::Report;

/// Where the signed JSON of a rendition is fetched, and its hash.
#[derive(Clone, Debug)]
pub struct SignedRef {
    /// `report_sha256` of the signed JSON.
    pub report_sha256: String,
    /// The path that returns it (`GET`, with an auditor's token).
    pub fetch_path: String,
}

/// A CSV cell: quoted when needed (RFC 4180); a cell a spreadsheet would run as a formula
/// (starting with `=`, `+`, `-`, `@`, tab or carriage return) is prefixed with `'`.
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv_row(out: &mut String, cells: &[&str]) {
    let line: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
    out.push_str(&line.join(","));
    out.push_str("\r\n");
}

/// The report as CSV: a heading block of `key,value` lines, then each table after a line
/// naming it, separated by empty lines.
#[must_use]
pub fn csv(report: &Report, signed: &SignedRef) -> String {
    let mut out = String::new();
    for (k, v) in heading(report, signed) {
        csv_row(&mut out, &[k, &v]);
    }
    out.push_str("\r\n");
    csv_row(&mut out, &["section", "summary"]);
    csv_row(&mut out, &["item", "value"]);
    for s in &report.summary {
        csv_row(&mut out, &[&s.label, &s.value]);
    }
    for t in &report.sections {
        out.push_str("\r\n");
        csv_row(&mut out, &["section", &t.id]);
        let cols: Vec<&str> = t.columns.iter().map(String::as_str).collect();
        csv_row(&mut out, &cols);
        for r in &t.rows {
            let cells: Vec<&str> = r.iter().map(String::as_str).collect();
            csv_row(&mut out, &cells);
        }
    }
    out.push_str("\r\n");
    csv_row(&mut out, &["section", "events_per_day"]);
    csv_row(&mut out, &["day", "events"]);
    for d in &report.events_per_day {
        csv_row(&mut out, &[&d.day, &d.events.to_string()]);
    }
    out
}

fn heading(report: &Report, signed: &SignedRef) -> Vec<(&'static str, String)> {
    vec![
        ("report", report.kind.clone()),
        ("title", report.title.clone()),
        ("serves", report.serves.clone()),
        ("ledger_id", report.ledger_id.clone()),
        (
            "period_from",
            report
                .period_from
                .clone()
                .unwrap_or_else(|| "first entry".to_owned()),
        ),
        (
            "period_to",
            report
                .period_to
                .clone()
                .unwrap_or_else(|| "the checkpoint".to_owned()),
        ),
        ("generated_at", report.generated_at.clone()),
        (
            "checkpoint_tree_size",
            report.checkpoint.tree_size.to_string(),
        ),
        ("checkpoint_root_hash", report.checkpoint.root_hash.clone()),
        ("checkpoint_timestamp", report.checkpoint.timestamp.clone()),
        ("signed_json_sha256", signed.report_sha256.clone()),
        ("signed_json_url", format!("GET {}", signed.fetch_path)),
    ]
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font:10.5pt/1.4 -apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#111;margin:2em auto;max-width:60em;padding:0 1em}
h1{font-size:1.6em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #999}
.meta{color:#444;margin:0 0 1em}.meta td{padding:0 1em 0 0;vertical-align:top}
table.data{border-collapse:collapse;width:100%;font-size:.9em}
table.data th,table.data td{border:1px solid #bbb;padding:.25em .4em;text-align:left;vertical-align:top;word-break:break-all}
table.data th{background:#eee}
.summary{display:grid;grid-template-columns:repeat(auto-fill,minmax(13em,1fr));gap:.5em;margin:1em 0}
.summary div{border:1px solid #bbb;padding:.5em}.summary .v{font-size:1.3em;font-weight:600}
.empty{color:#666;font-style:italic}footer{margin-top:2em;font-size:.85em;color:#444;border-top:1px solid #999;padding-top:.5em}
svg{max-width:100%;height:auto}
@page{size:A4;margin:15mm}
@media print{body{margin:0;max-width:none}h2{break-after:avoid}tr,.summary div{break-inside:avoid}thead{display:table-header-group}a{color:inherit;text-decoration:none}}
";

/// An inline SVG bar chart of events per day.
fn chart(report: &Report) -> String {
    let days = &report.events_per_day;
    let (w, h, pad) = (720.0_f64, 200.0_f64, 30.0_f64);
    let mut svg = format!(
        "<svg id=\"events-per-day\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w} {}\" role=\"img\" aria-label=\"Events per day\">",
        h + pad
    );
    if days.is_empty() {
        let _ = write!(
            svg,
            "<text x=\"10\" y=\"{}\" font-size=\"12\">No client events in the period.</text></svg>",
            h / 2.0
        );
        return svg;
    }
    let max = days.iter().map(|d| d.events).max().unwrap_or(1).max(1);
    #[expect(clippy::cast_precision_loss, reason = "chart geometry")]
    let (n, maxf) = (days.len() as f64, max as f64);
    let bar = (w - pad) / n;
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#333\"/><text x=\"0\" y=\"12\" font-size=\"11\">{max}</text><text x=\"0\" y=\"{h}\" font-size=\"11\">0</text>"
    );
    for (i, d) in days.iter().enumerate() {
        #[expect(clippy::cast_precision_loss, reason = "chart geometry")]
        let (x, bh) = (pad + i as f64 * bar, (d.events as f64 / maxf) * (h - 15.0));
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{x:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{bh:.2}\" fill=\"#3b6ea8\"><title>{} {}</title></rect>",
            h - bh,
            (bar * 0.85).max(0.5),
            esc(&d.day),
            d.events
        );
    }
    let first = esc(&days[0].day);
    let last = esc(&days[days.len() - 1].day);
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"11\">{first}</text><text x=\"{w}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{last}</text></svg>",
        h + 18.0,
        h + 18.0
    );
    svg
}

/// The report as a printable HTML page: summary on top, a table per section, an inline SVG
/// chart of events per day, print CSS. It loads nothing (a CSP forbids every fetch).
#[must_use]
pub fn html(report: &Report, signed: &SignedRef) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\
         <title>{} report</title><style>{STYLE}</style></head><body>",
        esc(&report.title)
    );
    let _ = write!(
        o,
        "<h1>{}</h1><p class=\"meta\">{}</p><table class=\"meta\">",
        esc(&report.title),
        esc(&report.serves)
    );
    for (k, v) in heading(report, signed).into_iter().skip(3) {
        let _ = write!(o, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    }
    o.push_str("</table><h2 id=\"summary\">Summary</h2><div class=\"summary\">");
    for s in &report.summary {
        let _ = write!(
            o,
            "<div><div class=\"l\">{}</div><div class=\"v\">{}</div></div>",
            esc(&s.label),
            esc(&s.value)
        );
    }
    o.push_str("</div><h2>Events per day</h2>");
    o.push_str(&chart(report));
    for t in &report.sections {
        let _ = write!(o, "<h2 id=\"{}\">{}</h2>", esc(&t.id), esc(&t.title));
        if t.rows.is_empty() {
            o.push_str("<p class=\"empty\">None.</p>");
            continue;
        }
        let _ = write!(
            o,
            "<table class=\"data\" data-section=\"{}\"><thead><tr>",
            esc(&t.id)
        );
        for c in &t.columns {
            let _ = write!(o, "<th>{}</th>", esc(c));
        }
        o.push_str("</tr></thead><tbody>");
        for r in &t.rows {
            o.push_str("<tr>");
            for c in r {
                let _ = write!(o, "<td>{}</td>", esc(c));
            }
            o.push_str("</tr>");
        }
        o.push_str("</tbody></table>");
    }
    let _ = write!(
        o,
        "<footer>This page is a rendition of a signed report. Signed JSON: SHA-256 \
         <code>{}</code>, fetched with <code>GET {}</code> (auditor token); check its signature \
         as docs/REPORTS.md describes.</footer></body></html>",
        esc(&signed.report_sha256),
        esc(&signed.fetch_path)
    );
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("a"), "a");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=SUM(A1)"), "'=SUM(A1)");
    }

    #[test]
    fn html_escapes() {
        assert_eq!(
            esc("<a href='x'>&</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
