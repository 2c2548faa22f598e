//! The operator's console (`GET /admin`): one server-rendered page, plain HTML and CSS, no
//! script, refreshing itself. Pure: it renders a [`View`] the shell gathered; every value taken
//! from traffic (paths, reasons, payloads, errors) is HTML-escaped here, in one place.

use std::fmt::Write as _;

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECS: u32 = 5;

/// Everything the page shows.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub version: String,
    pub dialect: &'static str,
    pub dry_run: bool,
    /// What "recent" covers, e.g. "last 5 min".
    pub recent: String,
    pub traffic: Vec<Count>,
    pub errors: Vec<Count>,
    /// Upstream exchange time: (upper bound in seconds, exchanges in that bucket alone).
    pub latency: Vec<(f64, u64)>,
    pub readiness: Readiness,
    pub outbox: Outbox,
    pub channels: Vec<Channel>,
    pub dead: Vec<Dead>,
    /// The cursor of the dead-letter page shown, and of the next one.
    pub dead_after: i64,
    pub dead_next: Option<i64>,
    /// The form token replay posts must carry.
    pub csrf: String,
}

/// A counter: what it counts (route and status, or error code), since start and recently.
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    pub label: String,
    pub total: f64,
    pub recent: f64,
}

#[derive(Debug, Default, Clone)]
pub struct Readiness {
    pub routes: Vec<(String, u64)>,
    pub refused: Vec<(String, u64)>,
    /// On-Premise field, times dropped, one request id that dropped it.
    pub dropped: Vec<(String, u64, String)>,
}

#[derive(Debug, Default, Clone)]
pub struct Outbox {
    pub pending: i64,
    pub delivered: i64,
    pub dead: i64,
    pub oldest_pending_secs: f64,
}

#[derive(Debug, Clone, Default)]
pub struct Channel {
    pub name: String,
    pub queued: usize,
    pub in_flight: usize,
    pub circuit: String,
    pub failures_in_a_row: u32,
    /// Deliveries per minute over the recent window.
    pub per_minute: f64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Dead {
    pub id: i64,
    pub channel: String,
    pub reason: String,
    pub attempts: i64,
    pub died_at: String,
    pub payload: String,
}

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

fn number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n:.1}")
    }
}

/// The sign-in page: the token as a password (a browser's Basic prompt works too).
pub fn sign_in(message: Option<&str>) -> String {
    let mut page = head("Sign in", false);
    page.push_str("<main><h1>waba-onprem-proxy</h1>");
    if let Some(message) = message {
        let _ = write!(page, "<p class=\"bad\">{}</p>", escape(message));
    }
    page.push_str(
        "<form method=\"post\" action=\"/admin/login\"><label>Admin token \
         <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label> \
         <button type=\"submit\">Sign in</button></form>\
         <p>Or open <a href=\"/admin\">/admin</a> and give the token as the password of the browser's own prompt.</p></main></body></html>",
    );
    page
}

fn head(title: &str, refresh: bool) -> String {
    let mut page = String::from("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    if refresh {
        let _ = write!(
            page,
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">"
        );
    }
    let _ = write!(
        page,
        "<title>{} · waba-onprem-proxy</title><link rel=\"stylesheet\" href=\"/admin/console.css\"></head><body>",
        escape(title)
    );
    page
}

/// A count per row: its label, since start, and over the recent window.
fn count_rows(counts: &[Count]) -> Vec<Vec<String>> {
    counts
        .iter()
        .map(|c| vec![escape(&c.label), number(c.total), number(c.recent)])
        .collect()
}

fn table(page: &mut String, headers: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        let _ = write!(page, "<p class=\"none\">{}</p>", escape(empty));
        return;
    }
    page.push_str("<table><thead><tr>");
    for header in headers {
        let _ = write!(page, "<th>{}</th>", escape(header));
    }
    page.push_str("</tr></thead><tbody>");
    for row in rows {
        page.push_str("<tr>");
        for cell in row {
            // Cells arrive escaped (some carry markup of ours, such as the replay form).
            let _ = write!(page, "<td>{cell}</td>");
        }
        page.push_str("</tr>");
    }
    page.push_str("</tbody></table>");
}

/// An inline SVG bar chart of the latency histogram (no script, no external asset).
fn latency_chart(buckets: &[(f64, u64)]) -> String {
    let max = buckets.iter().map(|(_, n)| *n).max().unwrap_or(0).max(1);
    let (width, height, bar) = (buckets.len().max(1) * 34, 120, 28);
    let mut svg = format!(
        "<svg role=\"img\" aria-label=\"upstream latency histogram\" width=\"{width}\" height=\"{}\" viewBox=\"0 0 {width} {}\">",
        height + 30,
        height + 30
    );
    for (i, (bound, count)) in buckets.iter().enumerate() {
        let h = (*count as f64 / max as f64 * height as f64).round() as usize;
        let x = i * 34 + 3;
        let label = if bound.is_infinite() {
            "+Inf".to_owned()
        } else if *bound < 1.0 {
            format!("{}ms", (bound * 1000.0).round())
        } else {
            format!("{bound}s")
        };
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"{bar}\" height=\"{h}\"><title>≤ {} : {count}</title></rect>\
             <text x=\"{}\" y=\"{}\" font-size=\"8\" text-anchor=\"middle\">{}</text>",
            height - h,
            escape(&label),
            x + bar / 2,
            height + 12,
            escape(&label)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The console page.
pub fn render(view: &View) -> String {
    let mut page = head("Console", true);
    let _ = write!(
        page,
        "<header><h1>waba-onprem-proxy</h1><p>On-Premise {} · upstream dialect {} · {}</p></header><main>",
        escape(&view.version),
        escape(view.dialect),
        if view.dry_run { "<strong>dry run</strong>: nothing is sent to Cloud" } else { "live" }
    );

    let _ = write!(page, "<section id=\"traffic\"><h2>Traffic</h2>");
    let recent = format!("{} ({})", "recent", view.recent);
    table(
        &mut page,
        &["route · status", "since start", &recent],
        &count_rows(&view.traffic),
        "No requests yet.",
    );
    page.push_str("<h3>Errors by On-Premise code</h3>");
    table(
        &mut page,
        &["code", "since start", &recent],
        &count_rows(&view.errors),
        "No errors.",
    );
    page.push_str("</section>");

    let _ = write!(
        page,
        "<section id=\"latency\"><h2>Upstream latency</h2>{}</section>",
        latency_chart(&view.latency)
    );

    page.push_str("<section id=\"readiness\"><h2>Migration readiness</h2><h3>Routes used</h3>");
    let rows: Vec<Vec<String>> = view
        .readiness
        .routes
        .iter()
        .map(|(r, n)| vec![escape(r), n.to_string()])
        .collect();
    table(
        &mut page,
        &["route · status", "requests"],
        &rows,
        "No requests yet.",
    );
    page.push_str("<h3>Refusals by reason</h3>");
    let rows: Vec<Vec<String>> = view
        .readiness
        .refused
        .iter()
        .map(|(r, n)| vec![escape(r), n.to_string()])
        .collect();
    table(&mut page, &["reason", "count"], &rows, "Nothing refused.");
    page.push_str("<h3>On-Premise fields that did not reach Cloud</h3>");
    let rows: Vec<Vec<String>> = view
        .readiness
        .dropped
        .iter()
        .map(|(f, n, id)| {
            vec![
                escape(f),
                n.to_string(),
                format!("<code>{}</code>", escape(id)),
            ]
        })
        .collect();
    table(
        &mut page,
        &["field", "count", "example request id"],
        &rows,
        "No field was dropped.",
    );
    page.push_str("</section>");

    let o = &view.outbox;
    let _ = write!(
        page,
        "<section id=\"webhooks\"><h2>Webhooks</h2><p>Outbox: {} pending (oldest {:.0} s), {} delivered, {} dead.</p>",
        o.pending, o.oldest_pending_secs, o.delivered, o.dead
    );
    let rows: Vec<Vec<String>> = view
        .channels
        .iter()
        .map(|c| {
            vec![
                escape(&c.name),
                c.queued.to_string(),
                c.in_flight.to_string(),
                format!("{:.1}", c.per_minute),
                format!(
                    "<span class=\"circuit-{}\">{}</span>",
                    escape(&c.circuit),
                    escape(&c.circuit)
                ),
                c.failures_in_a_row.to_string(),
                escape(c.last_error.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    table(
        &mut page,
        &[
            "channel",
            "waiting",
            "in flight",
            "delivered / min",
            "circuit",
            "failures in a row",
            "last error",
        ],
        &rows,
        "No channel has delivered yet.",
    );
    page.push_str("</section>");

    page.push_str("<section id=\"dead\"><h2>Dead letters</h2>");
    let rows: Vec<Vec<String>> = view
        .dead
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                escape(&d.channel),
                escape(&d.reason),
                d.attempts.to_string(),
                escape(&d.died_at),
                format!("<pre>{}</pre>", escape(&d.payload)),
                format!(
                    "<form method=\"post\" action=\"/admin/console/replay\"><input type=\"hidden\" name=\"id\" value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Replay</button></form>",
                    d.id,
                    escape(&view.csrf)
                ),
            ]
        })
        .collect();
    table(
        &mut page,
        &["id", "channel", "reason", "attempts", "died", "payload", ""],
        &rows,
        "No dead letters.",
    );
    page.push_str("<nav>");
    if view.dead_after > 0 {
        page.push_str("<a href=\"/admin#dead\">First page</a> ");
    }
    if let Some(next) = view.dead_next {
        let _ = write!(page, "<a href=\"/admin?after={next}#dead\">Next page</a>");
    }
    page.push_str("</nav></section></main></body></html>");
    page
}

/// The page's style sheet, served from `/admin/console.css` (the page allows no inline style).
pub const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}\
header{background:#12372a;color:#fff;padding:.6em 1.2em}header h1{margin:0;font-size:1.3em}header p{margin:.2em 0 0}\
main{padding:0 1.2em 2em}section{background:#fff;border:1px solid #dde;border-radius:6px;margin:1em 0;padding:.4em 1em 1em}\
h2{font-size:1.1em}h3{font-size:1em;color:#445}table{border-collapse:collapse;width:100%}\
th,td{border-bottom:1px solid #eee;padding:.25em .5em;text-align:left;vertical-align:top}\
pre{max-width:60em;max-height:12em;overflow:auto;margin:0;white-space:pre-wrap;word-break:break-all}\
.none{color:#667}.bad{color:#a00}.circuit-open,.circuit-half-open{color:#a00;font-weight:bold}\
svg rect{fill:#2d7d5a}form{display:inline}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_values_are_escaped_everywhere() {
        let hostile = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
        let view = View {
            traffic: vec![Count {
                label: hostile.into(),
                total: 1.0,
                recent: 1.0,
            }],
            readiness: Readiness {
                refused: vec![(hostile.into(), 1)],
                dropped: vec![(hostile.into(), 1, hostile.into())],
                ..Readiness::default()
            },
            channels: vec![Channel {
                name: hostile.into(),
                last_error: Some(hostile.into()),
                ..Channel::default()
            }],
            dead: vec![Dead {
                id: 7,
                channel: hostile.into(),
                reason: hostile.into(),
                payload: hostile.into(),
                ..Dead::default()
            }],
            csrf: "\"><b>".into(),
            ..View::default()
        };
        let page = render(&view);
        assert!(
            !page.contains("<script>") && !page.contains("<img"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img"));
        assert!(!page.contains("<b>"));
    }

    #[test]
    fn the_latency_chart_has_a_bar_per_bucket() {
        let chart = latency_chart(&[(0.001, 2), (0.002, 4), (f64::INFINITY, 0)]);
        assert_eq!(chart.matches("<rect").count(), 3);
        assert!(chart.contains("+Inf") && chart.contains("1ms"));
    }
}
