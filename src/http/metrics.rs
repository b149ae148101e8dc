//! `/metrics`: every family in Prometheus' text format (0.0.4), collected from the pools'
//! snapshots, the client registry, the counters and the alerts when scraped; nothing is
//! kept between scrapes. Names follow Prometheus' conventions: `pgwarden_…`, counters end
//! in `_total` (added by the encoder), times in seconds, sizes in bytes.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::alerts::collect::{self, Gathered};
use crate::alerts::{Alert, Rule, Subject};
use crate::context::Context;
use crate::pool::PoolSnapshot;
use crate::stats::{Totals, WAIT_BUCKETS_US};

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The proxy's state now: pools, applications, and the sample the alert rules read.
pub fn gather(ctx: &Context) -> Gathered {
    collect::gather(&collect::Sources {
        config: &ctx.current_config(),
        pools: &ctx.pools,
        clients: &ctx.clients,
        refusals: &ctx.refusals,
        admission: &ctx.admission,
    })
}

/// What one scrape shows, gathered before anything is written.
struct Scrape {
    now: Gathered,
    alerts: Vec<Alert>,
    ready: bool,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Scrape")
    }
}

/// The whole `/metrics` page.
pub fn render(ctx: &Context) -> String {
    let scrape = Scrape {
        now: gather(ctx),
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

/// Writes one gauge or counter family: its help, its type, then a sample per label set.
fn family<L: EncodeLabelSet, V: EncodeGaugeValue + EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    rows: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let mut sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => sample.encode_counter::<NoLabelSet, _, u64>(&value, None)?,
            _ => sample.encode_gauge(&value)?,
        }
    }
    Ok(())
}

const fn gauge(name: &'static str, help: &'static str) -> (&'static str, &'static str, MetricType) {
    (name, help, MetricType::Gauge)
}

/// Named without `_total`: the encoder adds it.
const fn counter(
    name: &'static str,
    help: &'static str,
) -> (&'static str, &'static str, MetricType) {
    (name, help, MetricType::Counter)
}

fn pool_labels(p: &PoolSnapshot) -> Labels<'_> {
    vec![("database", p.database.as_str()), ("user", p.user.as_str())]
}

fn with<'a>(p: &'a PoolSnapshot, key: &'static str, value: &'a str) -> Labels<'a> {
    let mut labels = pool_labels(p);
    labels.push((key, value));
    labels
}

fn us_to_secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// A counter family of the pools: its name, its help, its value.
type PoolCounter = (&'static str, &'static str, fn(&Totals) -> f64);

/// The pool counters, one family each.
const POOL_COUNTERS: [PoolCounter; 9] = [
    (
        "pgwarden_pool_transactions",
        "Transactions finished (ReadyForQuery with status idle).",
        |t| t.xact_count as f64,
    ),
    (
        "pgwarden_pool_queries",
        "Queries finished (one per ReadyForQuery).",
        |t| t.query_count as f64,
    ),
    (
        "pgwarden_pool_transaction_seconds",
        "Time spent in transactions.",
        |t| us_to_secs(t.xact_time_us),
    ),
    (
        "pgwarden_pool_query_seconds",
        "Time spent in queries.",
        |t| us_to_secs(t.query_time_us),
    ),
    (
        "pgwarden_pool_received_bytes",
        "Bytes received from clients.",
        |t| t.bytes_received as f64,
    ),
    ("pgwarden_pool_sent_bytes", "Bytes sent to clients.", |t| {
        t.bytes_sent as f64
    }),
    (
        "pgwarden_pool_client_logins",
        "Client logins to the pool.",
        |t| t.client_logins as f64,
    ),
    (
        "pgwarden_pool_server_connect_failures",
        "Server connections that could not be opened (refused, unreachable, timed out).",
        |t| t.connect_failures as f64,
    ),
    (
        "pgwarden_pool_server_login_failures",
        "Server logins that failed once connected (refused, bad password, protocol).",
        |t| t.login_failures as f64,
    ),
];

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        self.pool_states(&mut enc)?;
        self.pool_totals(&mut enc)?;
        self.globals(&mut enc)?;
        self.alert_states(&mut enc)
    }
}

impl Scrape {
    fn pool_states(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let pools = &self.now.pools;
        let clients = pools.iter().flat_map(|p| {
            [
                (with(p, "state", "active"), p.cl_active as u64),
                (with(p, "state", "waiting"), p.cl_waiting as u64),
            ]
        });
        family(
            enc,
            gauge(
                "pgwarden_pool_clients",
                "Clients of the pool: active (logged in, not waiting) and waiting for a server.",
            ),
            clients,
        )?;
        let servers = pools.iter().flat_map(|p| {
            let s = &p.servers;
            [
                ("active", s.active),
                ("idle", s.idle),
                ("used", s.used),
                ("tested", s.tested),
                ("login", s.login),
            ]
            .map(|(state, n)| (with(p, "state", state), n as u64))
        });
        family(enc, gauge("pgwarden_pool_servers", "Server connections of the pool: active (linked to a client), idle, used (idle, to be checked), tested (reset or check query running), login (being opened)."), servers)?;
        let size = pools
            .iter()
            .map(|p| (pool_labels(p), p.settings.size as u64));
        family(
            enc,
            gauge(
                "pgwarden_pool_size",
                "pool_size: the most servers the pool opens (before its reserve).",
            ),
            size,
        )?;
        let maxwait = pools
            .iter()
            .map(|p| (pool_labels(p), p.maxwait.as_secs_f64()));
        family(
            enc,
            gauge(
                "pgwarden_pool_max_wait_seconds",
                "How long the client waiting longest for a server has waited.",
            ),
            maxwait,
        )?;
        let failing = pools
            .iter()
            .map(|p| (pool_labels(p), u64::from(p.login_failing.is_some())));
        family(
            enc,
            gauge(
                "pgwarden_pool_login_failing",
                "1 while the pool's server logins are failing (until one succeeds).",
            ),
            failing,
        )?;
        let pinned = pools.iter().map(|p| (pool_labels(p), p.pinned as u64));
        family(
            enc,
            gauge(
                "pgwarden_pool_pinned_clients",
                "Clients pinned to their server (session state transaction pooling cannot move).",
            ),
            pinned,
        )?;
        let by_reason = pools.iter().flat_map(|p| {
            (p.pinned_by_reason.iter())
                .map(move |(reason, n)| (with(p, "reason", reason), *n as u64))
        });
        family(
            enc,
            gauge(
                "pgwarden_pool_pinned_clients_by_reason",
                "Pinned clients by reason (a client pinned for two reasons counts under both).",
            ),
            by_reason,
        )
    }

    fn pool_totals(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let pools = &self.now.pools;
        let mut waits = enc.encode_descriptor(
            "pgwarden_pool_wait_seconds",
            "How long clients waited for a server, per server handed out.",
            None,
            MetricType::Histogram,
        )?;
        for p in pools {
            let t = &p.totals;
            let buckets: Vec<(f64, u64)> = (WAIT_BUCKETS_US.iter())
                .zip(t.wait_buckets)
                .map(|(us, n)| (us_to_secs(*us), n))
                .collect();
            let count = t.wait_buckets.iter().sum();
            let labels = pool_labels(p);
            let mut sample = waits.encode_family(&labels)?;
            sample.encode_histogram::<NoLabelSet>(
                us_to_secs(t.wait_time_us),
                count,
                &buckets,
                None,
            )?;
        }
        for (name, help, value) in POOL_COUNTERS {
            let rows = pools.iter().map(|p| (pool_labels(p), value(&p.totals)));
            family(enc, counter(name, help), rows)?;
        }
        Ok(())
    }

    fn globals(&self, enc: &mut DescriptorEncoder) -> fmt::Result {
        let sample = &self.now.sample;
        let refusals = (sample.refusals.iter()).map(|(cap, n)| (vec![("cap", *cap)], *n));
        family(
            enc,
            counter(
                "pgwarden_refusals",
                "Clients refused, by the cap or timeout that refused them.",
            ),
            refusals,
        )?;
        let labels = |c: &crate::alerts::sample::CapUse| {
            vec![("cap", c.key.to_owned()), ("scope", c.scope.clone())]
        };
        let used = sample.caps.iter().map(|c| (labels(c), c.used as u64));
        family(enc, gauge("pgwarden_cap_used", "Current use of a cap that is on (scope: the database, user or application it counts)."), used)?;
        let limit = sample.caps.iter().map(|c| (labels(c), c.limit as u64));
        family(
            enc,
            gauge("pgwarden_cap_limit", "The value of a cap that is on."),
            limit,
        )?;
        let apps = self.now.apps.bounded.iter().flat_map(|a| {
            [("connected", a.connected), ("waiting", a.waiting)].map(|(state, n)| {
                (
                    vec![("application", a.application.as_str()), ("state", state)],
                    n as u64,
                )
            })
        });
        family(enc, gauge("pgwarden_application_clients", "Clients by application_name: the metrics_top_applications names with the most clients, the rest as other."), apps)?;
        let ready = [(Labels::new(), u64::from(self.ready))];
        family(
            enc,
            gauge(
                "pgwarden_ready",
                "1 while /health/ready answers 200 (not draining, no pool's logins failing).",
            ),
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
            gauge(
                "pgwarden_alerts_firing",
                "Built-in alerts firing now, by rule.",
            ),
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
            gauge(
                "pgwarden_alert_firing",
                "1 while the built-in alert fires, 0 for 15 minutes after it resolved.",
            ),
            each,
        )
    }
}
