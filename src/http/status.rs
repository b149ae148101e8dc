//! The status page at `/`: one server-rendered HTML page (no script) that refreshes itself,
//! with each pool's use against its caps, its waiting clients and wait percentiles, the top
//! applications, and the alerts.

use std::fmt::Write;

use std::collections::HashMap;

use crate::alerts::apps::AppCount;
use crate::alerts::{sample::seconds, AlertRow, Sample};
use crate::context::Context;
use crate::pool::PoolSnapshot;
use crate::stats::Totals;

/// How often the page reloads itself, in seconds.
const REFRESH_SECS: u32 = 5;

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em}\
table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}\
td:first-child,th:first-child,td.text,th.text{text-align:left}\
.bar{display:inline-block;height:.7em;background:#4a8;vertical-align:middle}\
.full{background:#d54}.firing{color:#b00;font-weight:bold}.ok{color:#080}.muted{color:#888}";

pub fn page(ctx: &Context) -> String {
    let now = super::metrics::gather(ctx);
    let recent: HashMap<String, Totals> = (ctx.pools.all().iter())
        .map(|p| (p.name().to_owned(), p.recent_waits()))
        .collect();
    let ready = super::health::ready(ctx);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>pgwarden status</title><style>{STYLE}</style></head><body>\
         <h1>pgwarden {}</h1><p id=\"health\">",
        env!("CARGO_PKG_VERSION")
    );
    match ready {
        Ok(()) => html.push_str("<span class=\"ok\">ready</span>"),
        Err(why) => {
            let _ = write!(
                html,
                "<span class=\"firing\">not ready</span>: {}",
                escape(&why)
            );
        }
    }
    html.push_str("</p>");
    pools(&mut html, &now.pools, &now.sample, &recent);
    caps(&mut html, &now.sample);
    applications(&mut html, &now.apps.bounded);
    alerts(&mut html, &ctx.alerts.rows());
    let _ = write!(
        html,
        "<p class=\"muted\">Refreshes every {REFRESH_SECS} s. Metrics at <a href=\"/metrics\">/metrics</a>.</p></body></html>"
    );
    html
}

fn bar(used: usize, limit: usize) -> String {
    let width = (used * 100).checked_div(limit).unwrap_or(0).min(100);
    let class = if used >= limit && limit > 0 {
        "bar full"
    } else {
        "bar"
    };
    format!("{used}/{limit} <span class=\"{class}\" style=\"width:{width}px\"></span>")
}

fn pools(
    html: &mut String,
    pools: &[PoolSnapshot],
    sample: &Sample,
    recent: &HashMap<String, Totals>,
) {
    html.push_str(
        "<h2>Pools</h2><table id=\"pools\"><tr><th>pool</th><th>mode</th>\
         <th>servers in use / pool_size</th><th>idle</th><th>opening</th><th>clients</th>\
         <th>waiting</th><th>longest wait</th><th>wait p50</th><th>wait p99</th><th>pinned</th>\
         <th class=\"text\">top application</th></tr>",
    );
    if pools.is_empty() {
        html.push_str("<tr><td colspan=\"12\" class=\"muted\">no pool yet</td></tr>");
    }
    let quantile = |t: Option<&Totals>, q| {
        t.and_then(|t| t.wait_quantile(q))
            .map_or_else(|| "-".to_owned(), seconds)
    };
    for (p, s) in pools.iter().zip(&sample.pools) {
        let name = format!("{}/{}", p.database, p.user);
        let waits = recent.get(&name);
        let top = s.top.as_ref().map_or_else(String::new, |h| h.brief());
        let failing = (p.login_failing.as_ref()).map_or_else(String::new, |f| {
            format!(
                "<br><span class=\"firing\">logins failing: {}</span>",
                escape(f)
            )
        });
        let _ = write!(
            html,
            "<tr class=\"pool\" data-pool=\"{}\"><td>{}{failing}</td><td>{}</td>\
             <td class=\"use\">{}</td><td class=\"idle\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"waiting\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"text top\">{}</td></tr>",
            escape(&name),
            escape(&name),
            crate::config::value::Value::show(&p.mode),
            bar(s.busy, p.settings.size),
            s.idle,
            p.servers.login,
            p.cl_active + p.cl_waiting,
            p.cl_waiting,
            seconds(p.maxwait),
            quantile(waits, 0.5),
            quantile(waits, 0.99),
            p.pinned,
            escape(&top),
        );
    }
    html.push_str("</table>");
}

fn applications(html: &mut String, apps: &[AppCount]) {
    html.push_str(
        "<h2>Top applications</h2><table id=\"applications\"><tr>\
         <th>application_name</th><th>clients</th><th>waiting</th></tr>",
    );
    if apps.is_empty() {
        html.push_str("<tr><td colspan=\"3\" class=\"muted\">no client</td></tr>");
    }
    for app in apps {
        let name = match app.application.as_str() {
            "" => "(none)",
            name => name,
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            app.connected,
            app.waiting
        );
    }
    html.push_str("</table>");
}

fn caps(html: &mut String, sample: &Sample) {
    html.push_str("<h2>Caps</h2><table id=\"caps\"><tr><th>cap</th><th>used / limit</th></tr>");
    for cap in &sample.caps {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(&cap.name()),
            bar(cap.used, cap.limit)
        );
    }
    html.push_str("</table>");
}

fn alerts(html: &mut String, rows: &[AlertRow]) {
    html.push_str(
        "<h2>Alerts</h2><table id=\"alerts\"><tr><th>rule</th><th>state</th><th>since</th>\
         <th class=\"text\">message</th></tr>",
    );
    if rows.is_empty() {
        html.push_str("<tr><td colspan=\"4\" class=\"ok\">no alert</td></tr>");
    }
    for row in rows {
        let _ = write!(
            html,
            "<tr class=\"alert {state}\"><td>{}</td><td>{state}</td><td>{}</td>\
             <td class=\"text\">{}</td></tr>",
            row.rule,
            seconds(row.since),
            escape(&row.message),
            state = row.state,
        );
    }
    html.push_str("</table>");
}

/// Text made safe inside HTML elements and attribute values.
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
