//! What a scenario hands back: named figures with their unit, the target where it
//! has one, and how they compare with PostgreSQL's own ceiling; printed as a Markdown table
//! and as one JSON line per scenario.
use serde_json::{json, Map, Value};

/// A target of the issue.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// The figure must be at least this.
    AtLeast(f64),
    /// The figure must be at most this.
    AtMost(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(bound) => value >= bound,
            Target::AtMost(bound) => value <= bound,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::AtLeast(bound) => format!(">= {}", number(bound)),
            Target::AtMost(bound) => format!("<= {}", number(bound)),
        }
    }
}

/// One measured figure.
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub target: Option<Target>,
    /// The figure as a fraction or multiple of what PostgreSQL itself does (`raw`).
    pub relative: Option<String>,
}

/// The outcome of one scenario.
pub struct Report {
    pub scenario: &'static str,
    pub metrics: Vec<Metric>,
    pub notes: Vec<String>,
    pub elapsed_secs: f64,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            metrics: Vec::new(),
            notes: Vec::new(),
            elapsed_secs: 0.0,
        }
    }

    /// Adds a figure; the returned reference sets its target and comparison.
    pub fn metric(&mut self, name: impl Into<String>, value: f64, unit: &str) -> &mut Metric {
        self.metrics.push(Metric {
            name: name.into(),
            value,
            unit: unit.to_owned(),
            target: None,
            relative: None,
        });
        let last = self.metrics.len() - 1;
        &mut self.metrics[last]
    }

    pub fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    /// The scenario as one JSON object on one line.
    pub fn json_line(&self, postgres: &Value) -> String {
        let mut metrics = Map::new();
        for metric in &self.metrics {
            metrics.insert(
                metric.name.clone(),
                json!({
                    "value": round(metric.value),
                    "unit": metric.unit,
                    "target": metric.target.map(Target::describe),
                    "met": metric.target.map(|t| t.met(metric.value)),
                    "relative": metric.relative,
                }),
            );
        }
        json!({
            "scenario": self.scenario,
            "elapsed_secs": round(self.elapsed_secs),
            "metrics": metrics,
            "notes": self.notes,
            "postgres": postgres,
        })
        .to_string()
    }
}

impl Metric {
    pub fn target(&mut self, target: Target) -> &mut Metric {
        self.target = Some(target);
        self
    }

    pub fn relative(&mut self, relative: Option<String>) -> &mut Metric {
        self.relative = relative;
        self
    }
}

/// Every report as one Markdown table.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::from(
        "| scenario | metric | value | unit | target | met | vs PostgreSQL |\n\
         |---|---|---:|---|---|---|---|\n",
    );
    for report in reports {
        for metric in &report.metrics {
            let (target, met) = match metric.target {
                Some(t) => (
                    t.describe(),
                    if t.met(metric.value) { "yes" } else { "**no**" },
                ),
                None => (String::new(), ""),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                report.scenario,
                metric.name,
                number(metric.value),
                metric.unit,
                target,
                met,
                metric.relative.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

/// A figure with as many digits as it deserves.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        let whole = value.round() as i64;
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if whole < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn round(value: f64) -> Value {
    if value.is_finite() {
        json!((value * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// Nearest-rank percentiles of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn summarize(mut sample: Vec<f64>) -> Summary {
    sample.retain(|v| v.is_finite());
    sample.sort_by(f64::total_cmp);
    let rank = |p: f64| -> f64 {
        if sample.is_empty() {
            return f64::NAN;
        }
        let index = ((p / 100.0) * sample.len() as f64).ceil() as usize;
        sample[index.clamp(1, sample.len()) - 1]
    };
    Summary {
        count: sample.len(),
        p50: rank(50.0),
        p99: rank(99.0),
        max: sample.last().copied().unwrap_or(f64::NAN),
    }
}

pub fn median(sample: &[f64]) -> f64 {
    summarize(sample.to_vec()).p50
}
