//! The webhook's `/metrics`: reviews by verdict, a latency histogram and certificate
//! reloads, written by [`crate::serve::prom`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::admission::Verdict;
use crate::serve::prom;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 11] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Counters for `/metrics`: reviews by verdict and a latency histogram.
#[derive(Default)]
pub struct Metrics {
    reviews: [AtomicU64; 5],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, verdict: Verdict, took: Duration) {
        self.reviews[verdict as usize].fetch_add(1, Ordering::Relaxed);
        let secs = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    pub fn reviews(&self, verdict: Verdict) -> u64 {
        self.reviews[verdict as usize].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let reviews: Vec<(String, String)> = Verdict::ALL
            .iter()
            .map(|v| {
                (
                    format!("{{result=\"{}\"}}", v.as_str()),
                    self.reviews(*v).to_string(),
                )
            })
            .collect();
        let reviews: Vec<(&str, String)> = reviews
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        prom::family(
            out,
            "webhook_reviews_total",
            "counter",
            "Admission reviews answered, by result.",
            &reviews,
        );
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(bound, n)| {
                cumulative += n.load(Ordering::Relaxed);
                (*bound, cumulative)
            })
            .collect();
        prom::histogram(
            out,
            "webhook_review_duration_seconds",
            "Time to decide a review, from the body read to the answer encoded.",
            &buckets,
            self.count.load(Ordering::Relaxed),
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
    }
}

/// Certificate reloads after the files changed, as (succeeded, failed).
pub fn render_reloads(out: &mut String, (ok, failed): (u64, u64)) {
    prom::family(
        out,
        "webhook_certificate_reloads_total",
        "counter",
        "Certificate reloads after the files changed, by result.",
        &[
            ("{result=\"ok\"}", ok.to_string()),
            ("{result=\"failed\"}", failed.to_string()),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact text the webhook served before `prom` wrote it, so dashboards keep
    /// working.
    #[test]
    fn metrics_count_and_bucket() {
        let m = Metrics::default();
        m.observe(Verdict::Injected, Duration::from_micros(300));
        m.observe(Verdict::Denied, Duration::from_secs(1));
        let mut text = String::new();
        m.render(&mut text);
        render_reloads(&mut text, (2, 1));
        let d = "polars_cloud_auth_webhook_review_duration_seconds";
        let r = "polars_cloud_auth_webhook_reviews_total";
        let c = "polars_cloud_auth_webhook_certificate_reloads_total";
        let want = format!(
            "# HELP {r} Admission reviews answered, by result.\n# TYPE {r} counter\n\
             {r}{{result=\"injected\"}} 1\n{r}{{result=\"unchanged\"}} 0\n\
             {r}{{result=\"skipped\"}} 0\n{r}{{result=\"denied\"}} 1\n\
             {r}{{result=\"invalid\"}} 0\n\
             # HELP {d} Time to decide a review, from the body read to the answer encoded.\n\
             # TYPE {d} histogram\n\
             {d}_bucket{{le=\"0.0001\"}} 0\n{d}_bucket{{le=\"0.00025\"}} 0\n\
             {d}_bucket{{le=\"0.0005\"}} 1\n{d}_bucket{{le=\"0.001\"}} 1\n\
             {d}_bucket{{le=\"0.0025\"}} 1\n{d}_bucket{{le=\"0.005\"}} 1\n\
             {d}_bucket{{le=\"0.01\"}} 1\n{d}_bucket{{le=\"0.025\"}} 1\n\
             {d}_bucket{{le=\"0.05\"}} 1\n{d}_bucket{{le=\"0.1\"}} 1\n\
             {d}_bucket{{le=\"0.25\"}} 1\n{d}_bucket{{le=\"+Inf\"}} 2\n\
             {d}_sum 1.0003\n{d}_count 2\n\
             # HELP {c} Certificate reloads after the files changed, by result.\n\
             # TYPE {c} counter\n{c}{{result=\"ok\"}} 2\n{c}{{result=\"failed\"}} 1\n"
        );
        assert_eq!(text, want);
    }
}
