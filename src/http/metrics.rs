//! `/metrics`: every family in Prometheus' text format (0.0.4), collected from the pools,
//! the counters and the alerts when scraped; nothing is kept between scrapes.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::alerts::{self, collect, Alert, Rule, Sample, Subject};
use crate::context::Context;

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What one scrape shows, gathered before anything is written.
#[derive(Debug)]
struct Scrape {
    sample: Sample,
    alerts: Vec<Alert>,
    ready: bool,
}

/// The pools' state now, as the alert rules read it.
pub fn sample(ctx: &Context) -> Sample {
    collect::sample(&collect::Sources {
        config: &ctx.config,
        pools: &ctx.pools,
        refusals: &ctx.refusals,
        admission: &ctx.admission,
    })
}

/// The whole `/metrics` page.
pub fn render(ctx: &Context) -> String {
    let scrape = Scrape {
        sample: sample(ctx),
        alerts: ctx.alerts.list(),
        ready: super::health::ready(ctx).is_ok(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes one family: its help, its type, then a sample per label set.
fn family<'a, L: EncodeLabelSet, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    V: EncodeGaugeValue + EncodeCounterValue + 'a,
{
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<Labels, _, u64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.pools(&mut enc)?;
        self.globals(&mut enc)?;
        self.alert_states(&mut enc)
    }
}

fn pool_labels(p: &alerts::sample::PoolSample) -> Labels<'_> {
    vec![("database", p.database.as_str()), ("user", p.user.as_str())]
}

impl Scrape {
    fn pools(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let pools = &self.sample.pools;
        let clients = pools.iter().flat_map(|p| {
            let with = |state| {
                let mut labels = pool_labels(p);
                labels.push(("state", state));
                labels
            };
            [(with("waiting"), p.waiting as u64)]
        });
        family(
            enc,
            "pgwarden_pool_clients",
            "Clients of the pool by state.",
            MetricType::Gauge,
            clients,
        )?;
        let servers = pools.iter().flat_map(|p| {
            let with = |state| {
                let mut labels = pool_labels(p);
                labels.push(("state", state));
                labels
            };
            [
                (with("active"), p.busy as u64),
                (with("idle"), p.idle as u64),
            ]
        });
        family(
            enc,
            "pgwarden_pool_servers",
            "Server connections of the pool by state.",
            MetricType::Gauge,
            servers,
        )?;
        let size = pools.iter().map(|p| (pool_labels(p), p.size as u64));
        family(
            enc,
            "pgwarden_pool_size",
            "pool_size: the most servers the pool opens.",
            MetricType::Gauge,
            size,
        )?;
        let pinned = pools.iter().map(|p| (pool_labels(p), p.pinned as u64));
        family(
            enc,
            "pgwarden_pool_pinned_clients",
            "Clients pinned to their server.",
            MetricType::Gauge,
            pinned,
        )?;
        let by_reason = pools.iter().flat_map(|p| {
            p.pin_reasons.iter().map(|(reason, n)| {
                let mut labels = pool_labels(p);
                labels.push(("reason", reason));
                (labels, *n as u64)
            })
        });
        family(enc, "pgwarden_pool_pinned_clients_by_reason", "Clients pinned to their server, by reason (a client pinned for two reasons counts under both).", MetricType::Gauge, by_reason)
    }

    fn globals(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let refusals = (self.sample.refusals.iter()).map(|(cap, n)| (vec![("cap", *cap)], *n));
        family(
            enc,
            "pgwarden_refusals",
            "Clients refused, by the cap or timeout that refused them.",
            MetricType::Counter,
            refusals,
        )?;
        let caps = &self.sample.caps;
        let labels = |c: &'_ alerts::sample::CapUse| -> Vec<(&'static str, String)> {
            vec![("cap", c.key.to_owned()), ("scope", c.scope.clone())]
        };
        let used = caps.iter().map(|c| (labels(c), c.used as u64));
        family(
            enc,
            "pgwarden_cap_used",
            "Current use of a cap that is on.",
            MetricType::Gauge,
            used,
        )?;
        let limit = caps.iter().map(|c| (labels(c), c.limit as u64));
        family(
            enc,
            "pgwarden_cap_limit",
            "The value of a cap that is on.",
            MetricType::Gauge,
            limit,
        )?;
        let ready = [(Labels::new(), u64::from(self.ready))];
        family(
            enc,
            "pgwarden_ready",
            "1 while /health/ready answers 200.",
            MetricType::Gauge,
            ready,
        )
    }

    fn alert_states(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let per_rule = Rule::ALL.iter().map(|rule| {
            let firing = self
                .alerts
                .iter()
                .filter(|a| a.rule == *rule && a.is_firing());
            (vec![("rule", rule.name())], firing.count() as u64)
        });
        family(
            enc,
            "pgwarden_alerts_firing",
            "Alerts firing now, by rule.",
            MetricType::Gauge,
            per_rule,
        )?;
        let each = self.alerts.iter().map(|a| {
            let (database, user, cap) = match &a.subject {
                Subject::Pool { database, user } => (database.as_str(), user.as_str(), ""),
                Subject::Cap(cap) => ("", "", cap.as_str()),
            };
            let labels = vec![
                ("rule", a.rule.name()),
                ("database", database),
                ("user", user),
                ("cap", cap),
            ];
            (labels, u64::from(a.is_firing()))
        });
        family(
            enc,
            "pgwarden_alert_firing",
            "1 while the alert fires, 0 for some minutes after it resolved.",
            MetricType::Gauge,
            each,
        )
    }
}
