//! Schedules (API.md "Schedules (cron)"): cron patterns (croner, five or six fields, the
//! `@daily` family) or fixed intervals, in an IANA time zone (chrono-tz), and the loop every
//! `work` process runs to fire the due ones.
//!
//! Exactly once per slot is the database's doing: due schedules are taken under a row lock
//! (`SKIP LOCKED`, so processes share them) and each slot's job is enqueued against the
//! unique key (tenant, schedule, scheduled_for) on jobs. Times come from the database's
//! clock, never the host's: a host whose clock jumps neither fires early nor twice.
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use deadpool_postgres::Pool;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::job::{is_name, JobSpec, SpecError};

/// Most missed slots one schedule catches up with `catch_up: all`.
pub const MAX_CATCH_UP: usize = 100;
/// A slot older than this when it is fired counts as missed (downtime) for `catch_up:
/// none`: firing runs every [`TICK`], so an on-time slot is well under this late.
const MISSED_AFTER: Duration = Duration::from_secs(5);
/// How often a worker looks for due schedules.
const TICK: Duration = Duration::from_millis(200);

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Timing {
    /// A cron pattern, read in the schedule's time zone.
    Cron(Box<Cron>),
    /// Every so many seconds, on multiples of it since the Unix epoch.
    Every(f64),
}

/// A schedule's timing and time zone.
#[derive(Debug, Clone)]
pub struct Plan {
    timing: Timing,
    zone: Tz,
}

impl Plan {
    /// Parses `cron` or `every` (exactly one) and the IANA `timezone`.
    pub fn parse(
        cron: Option<&str>,
        every: Option<&str>,
        timezone: &str,
    ) -> Result<Plan, SpecError> {
        let zone = Tz::from_str(timezone).map_err(|_| {
            SpecError::rule(
                "timezone",
                "must be an IANA time zone name, e.g. Europe/Paris",
            )
        })?;
        let timing = match (cron, every) {
            (Some(pattern), None) => Timing::Cron(Box::new(parse_cron(pattern)?)),
            (None, Some(every)) => Timing::Every(parse_every(every)?),
            (Some(_), Some(_)) => {
                return Err(SpecError::rule("every", "give cron or every, not both"))
            }
            (None, None) => return Err(SpecError::rule("cron", "cron or every is required")),
        };
        Ok(Plan { timing, zone })
    }

    /// The plan of a stored schedule.
    pub fn stored(cron: Option<&str>, every_secs: Option<f64>, timezone: &str) -> Option<Plan> {
        let zone = Tz::from_str(timezone).ok()?;
        let timing = match (cron, every_secs) {
            (Some(pattern), _) => Timing::Cron(Box::new(parse_cron(pattern).ok()?)),
            (None, Some(secs)) if secs > 0.0 => Timing::Every(secs),
            _ => return None,
        };
        Some(Plan { timing, zone })
    }

    /// The interval in seconds, for `every` plans.
    pub fn every_secs(&self) -> Option<f64> {
        match self.timing {
            Timing::Every(secs) => Some(secs),
            Timing::Cron(_) => None,
        }
    }

    /// The first slot strictly after `after`. Local wall-clock time only moves forward:
    /// in an hour that a daylight-saving change repeats, each slot runs once (at its first
    /// occurrence); a slot inside an hour the change skips runs once, just after it.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.timing {
            Timing::Every(secs) => {
                let step = (secs * 1000.0).round() as i64;
                let at = after.timestamp_millis();
                let next = (at.div_euclid(step) + 1) * step;
                DateTime::from_timestamp_millis(next)
            }
            Timing::Cron(cron) => {
                // Slots fall on whole seconds: croner keeps the fraction of its start.
                let after =
                    chrono::DurationRound::duration_trunc(after, chrono::TimeDelta::seconds(1))
                        .unwrap_or(after);
                let start = after.with_timezone(&self.zone);
                let floor: NaiveDateTime = start.naive_local();
                let mut cursor = start;
                for _ in 0..64 {
                    let next = cron.find_next_occurrence(&cursor, false).ok()?;
                    if next.naive_local() > floor {
                        return Some(next.with_timezone(&Utc));
                    }
                    // The same wall-clock time again (a repeated hour): already run.
                    cursor = next;
                }
                None
            }
        }
    }

    /// The slots to fire at `now` for a schedule whose next unfired slot is `due`, by its
    /// `catch_up` rule, and the next slot after them.
    pub fn slots(
        &self,
        due: DateTime<Utc>,
        now: DateTime<Utc>,
        catch_up: &str,
    ) -> (Vec<DateTime<Utc>>, Option<DateTime<Utc>>) {
        let mut missed = Vec::new();
        let mut slot = Some(due);
        // Every slot up to now (bounded: an interval of a second after a year down).
        while let Some(at) = slot.filter(|at| *at <= now) {
            missed.push(at);
            if missed.len() > 100_000 {
                break;
            }
            slot = self.next_after(at);
        }
        let next = match slot.filter(|at| *at > now) {
            Some(next) => Some(next),
            None => self.next_after(now),
        };
        let recent = |at: &DateTime<Utc>| (now - *at).to_std().unwrap_or_default() <= MISSED_AFTER;
        let fire = match catch_up {
            "all" => {
                let skip = missed.len().saturating_sub(MAX_CATCH_UP);
                missed.split_off(skip)
            }
            // The latest slot if it is on time, none missed before it.
            "none" => missed.pop().filter(recent).into_iter().collect(),
            // latest: the most recent slot only.
            _ => missed.pop().into_iter().collect(),
        };
        (fire, next)
    }
}

fn parse_cron(pattern: &str) -> Result<Cron, SpecError> {
    let fields = pattern.split_whitespace().count();
    if !pattern.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
        return Err(SpecError::rule(
            "cron",
            "expected five fields (minute hour day-of-month month day-of-week), six with \
             seconds first, or @hourly/@daily/@midnight/@weekly/@monthly/@yearly",
        ));
    }
    // `@midnight` is Vixie cron's other name for `@daily` (croner knows only the latter).
    let pattern = if pattern.trim().eq_ignore_ascii_case("@midnight") {
        "@daily"
    } else {
        pattern
    };
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(pattern)
        .map_err(|e| SpecError::rule("cron", format!("not a cron pattern: {e}")))
}

/// `30s`, `5m`, `1h30m`, `1d`: at least one second, at most 366 days.
fn parse_every(text: &str) -> Result<f64, SpecError> {
    let bad = || {
        SpecError::rule(
            "every",
            "expected a duration such as 30s, 5m, 1h30m or 1d (1 s to 366 d)",
        )
    };
    let mut total = 0f64;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total += value
            * match c {
                's' => 1.0,
                'm' => 60.0,
                'h' => 3600.0,
                'd' => 86_400.0,
                _ => return Err(bad()),
            };
    }
    if !number.is_empty() || !(1.0..=366.0 * 86_400.0).contains(&total) {
        return Err(bad());
    }
    Ok(total)
}

/// A checked schedule definition (the body of `POST /v1/schedules`, an entry of
/// `--schedules FILE`).
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// Unique per tenant.
    pub name: String,
    /// The pattern, as given.
    pub cron: Option<String>,
    /// The interval, in seconds.
    pub every_secs: Option<f64>,
    /// IANA name.
    pub timezone: String,
    /// The job spec, as it will be enqueued.
    pub job: Value,
    /// `allow` or `skip`.
    pub overlap: String,
    /// `latest`, `none` or `all`.
    pub catch_up: String,
    /// Its timing.
    pub plan: Plan,
}

const SCHEDULE_FIELDS: [&str; 8] = [
    "name", "cron", "every", "timezone", "job", "overlap", "catch_up", "paused",
];

impl ScheduleSpec {
    /// Parses a schedule body, naming the first offending field. `check_args` are the rules
    /// of known kinds (as for `POST /v1/jobs`).
    pub fn parse(
        value: &Value,
        check_args: impl Fn(&str, &Value) -> Result<(), SpecError>,
    ) -> Result<ScheduleSpec, SpecError> {
        let object = value
            .as_object()
            .ok_or_else(|| SpecError::kind("body", "expected a JSON object"))?;
        if let Some(unknown) = object
            .keys()
            .find(|k| !SCHEDULE_FIELDS.contains(&k.as_str()))
        {
            return Err(SpecError::rule(unknown, "unknown field"));
        }
        let text = |field: &str| -> Result<Option<&str>, SpecError> {
            match object.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(SpecError::kind(field, "expected a string")),
            }
        };
        let name = text("name")?.ok_or_else(|| SpecError::rule("name", "is required"))?;
        if !is_name(name, 128) {
            return Err(SpecError::rule(
                "name",
                "must be 1-128 characters of [A-Za-z0-9_.:-]",
            ));
        }
        let timezone = text("timezone")?.unwrap_or("UTC");
        let cron = text("cron")?;
        let every = text("every")?;
        let plan = Plan::parse(cron, every, timezone)?;
        let job = object
            .get("job")
            .ok_or_else(|| SpecError::rule("job", "is required"))?;
        let spec = JobSpec::parse_with(job, check_args).map_err(|e| e.within("job"))?;
        let one_of = |field: &str, allowed: &[&str], default: &str| -> Result<String, SpecError> {
            let value = text(field)?.unwrap_or(default);
            if allowed.contains(&value) {
                Ok(value.to_owned())
            } else {
                Err(SpecError::rule(
                    field,
                    format!("must be one of {}", allowed.join(", ")),
                ))
            }
        };
        Ok(ScheduleSpec {
            name: name.to_owned(),
            cron: cron.map(str::to_owned),
            every_secs: plan.every_secs(),
            timezone: timezone.to_owned(),
            job: spec.to_sql_json(),
            overlap: one_of("overlap", &["allow", "skip"], "allow")?,
            catch_up: one_of("catch_up", &["latest", "none", "all"], "latest")?,
            plan,
        })
    }
}

/// Creates or replaces a schedule (by tenant and name); the schedule row as JSON and
/// whether it was created. Its next slot is computed from the database's clock.
pub async fn upsert(
    client: &impl db::GenericClient,
    tenant: &str,
    spec: &ScheduleSpec,
    paused: Option<bool>,
) -> db::Result<(Value, bool)> {
    let row = db::query_one(client, "select now()", &[]).await?;
    let now: DateTime<Utc> = row.try_get(0)?;
    let next = spec.plan.next_after(now);
    let statement = "insert into jobcast.schedules as s
                         (tenant, name, cron, every_secs, timezone, job, overlap, catch_up,
                          paused, next_run_at)
                     values ($1, $2, $3, $4, $5, $6, $7, $8, coalesce($9, false), $10)
                     on conflict (tenant, name) do update
                        set cron = excluded.cron, every_secs = excluded.every_secs,
                            timezone = excluded.timezone, job = excluded.job,
                            overlap = excluded.overlap, catch_up = excluded.catch_up,
                            paused = coalesce($9, s.paused), next_run_at = excluded.next_run_at,
                            updated_at = now()
                     returning *, (xmax = 0) as created";
    let row = db::query_one(
        client,
        statement,
        &[
            &tenant,
            &spec.name,
            &spec.cron,
            &spec.every_secs,
            &spec.timezone,
            &spec.job,
            &spec.overlap,
            &spec.catch_up,
            &paused,
            &next,
        ],
    )
    .await?;
    Ok((to_json(&row)?, row.try_get("created")?))
}

/// A schedule row as the API shows it.
pub fn to_json(row: &tokio_postgres::Row) -> db::Result<Value> {
    let ts = |name: &str| -> db::Result<Value> {
        Ok(row
            .try_get::<_, Option<DateTime<Utc>>>(name)?
            .map(|t| Value::String(crate::job::rfc3339(t)))
            .unwrap_or(Value::Null))
    };
    let every: Option<f64> = row.try_get("every_secs")?;
    let mut object = Map::new();
    object.insert("name".into(), json!(row.try_get::<_, String>("name")?));
    object.insert(
        "cron".into(),
        json!(row.try_get::<_, Option<String>>("cron")?),
    );
    object.insert("every".into(), json!(every.map(format_every)));
    object.insert(
        "timezone".into(),
        json!(row.try_get::<_, String>("timezone")?),
    );
    object.insert("job".into(), row.try_get::<_, Value>("job")?);
    object.insert(
        "overlap".into(),
        json!(row.try_get::<_, String>("overlap")?),
    );
    object.insert(
        "catch_up".into(),
        json!(row.try_get::<_, String>("catch_up")?),
    );
    object.insert("paused".into(), json!(row.try_get::<_, bool>("paused")?));
    object.insert("next_run_at".into(), ts("next_run_at")?);
    object.insert("last_run_at".into(), ts("last_run_at")?);
    object.insert(
        "last_job_id".into(),
        json!(row
            .try_get::<_, Option<i64>>("last_job_id")?
            .map(|id| id.to_string())),
    );
    object.insert("created_at".into(), ts("created_at")?);
    object.insert("updated_at".into(), ts("updated_at")?);
    Ok(Value::Object(object))
}

fn format_every(secs: f64) -> String {
    if secs.fract() == 0.0 {
        let secs = secs as u64;
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60)] {
            if secs.is_multiple_of(size) {
                return format!("{}{unit}", secs / size);
            }
        }
        return format!("{secs}s");
    }
    format!("{secs}s")
}

/// Applies `--schedules FILE`: a JSON array of schedule bodies (each may name its
/// `tenant`, default `default`), created or replaced by name; others are left alone.
pub async fn apply_file(
    pool: &Pool,
    path: &std::path::Path,
    check_args: impl Fn(&str, &Value) -> Result<(), SpecError> + Copy,
) -> Result<usize, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--schedules {}: {e}", path.display()))?;
    let entries: Vec<Value> = serde_json::from_str(&text)
        .map_err(|e| format!("--schedules {}: not a JSON array: {e}", path.display()))?;
    let mut parsed = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let mut entry = entry.clone();
        let tenant = match entry.as_object_mut().and_then(|o| o.remove("tenant")) {
            None => "default".to_owned(),
            Some(Value::String(t)) if is_name(&t, 64) => t,
            Some(_) => {
                return Err(format!(
                    "--schedules {}: [{index}].tenant: not a tenant name",
                    path.display()
                ))
            }
        };
        let spec = ScheduleSpec::parse(&entry, check_args)
            .map_err(|e| format!("--schedules {}: [{index}].{e}", path.display()))?;
        parsed.push((tenant, spec));
    }
    let client = pool
        .get()
        .await
        .map_err(|e| db::Error::from(e).to_string())?;
    for (tenant, spec) in &parsed {
        upsert(&client, tenant, spec, None)
            .await
            .map_err(|e| format!("--schedules {}: {}: {e}", path.display(), spec.name))?;
    }
    Ok(parsed.len())
}

/// The firing loop of a worker process: every [`TICK`], the due schedules (locked, so
/// each is fired by one process at a time) get their slots' jobs.
pub async fn run(pool: Pool, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        loop {
            match db::deadline(fire_due(&pool)).await {
                // A full page: more may be due now.
                Ok(fired) if fired >= PAGE => continue,
                Ok(_) => break,
                Err(e) => {
                    if !e.is_connection() {
                        tracing::warn!(error = %e, "firing schedules failed");
                    }
                    break;
                }
            }
        }
    }
}

/// Schedules handled per transaction.
const PAGE: usize = 20;

async fn fire_due(pool: &Pool) -> db::Result<usize> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let rows = db::query(
        &transaction,
        "select * from jobcast.due_schedules($1)",
        &[&(PAGE as i32)],
    )
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    for row in &rows {
        let tenant: String = row.try_get("tenant")?;
        let name: String = row.try_get("name")?;
        let cron: Option<String> = row.try_get("cron")?;
        let every: Option<f64> = row.try_get("every_secs")?;
        let timezone: String = row.try_get("timezone")?;
        let job: Value = row.try_get("job")?;
        let overlap: String = row.try_get("overlap")?;
        let catch_up: String = row.try_get("catch_up")?;
        let due: DateTime<Utc> = row.try_get("next_run_at")?;
        let mut last_job: Option<i64> = row.try_get("last_job_id")?;
        let now: DateTime<Utc> = row.try_get("now")?;
        let Some(plan) = Plan::stored(cron.as_deref(), every, &timezone) else {
            tracing::warn!(%tenant, schedule = %name, "a stored schedule no longer parses; pausing it");
            db::execute(
                &transaction,
                "update jobcast.schedules set paused = true where tenant = $1 and name = $2",
                &[&tenant, &name],
            )
            .await?;
            continue;
        };
        let (fire, next) = plan.slots(due, now, &catch_up);
        let mut last_slot = None;
        for slot in fire {
            let id: Option<i64> = db::query_one(
                &transaction,
                "select jobcast.fire_schedule($1, $2, $3, $4, $5, $6)",
                &[&tenant, &name, &slot, &job, &(overlap == "skip"), &last_job],
            )
            .await?
            .try_get(0)?;
            if let Some(id) = id {
                tracing::info!(%tenant, schedule = %name, job_id = id, slot = %slot, "schedule fired");
                last_job = Some(id);
                last_slot = Some(slot);
            }
        }
        db::execute(
            &transaction,
            "update jobcast.schedules
                set next_run_at = $3, last_run_at = coalesce($4, last_run_at),
                    last_job_id = $5
              where tenant = $1 and name = $2",
            &[&tenant, &name, &next, &last_slot, &last_job],
        )
        .await?;
    }
    transaction.commit().await?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn five_and_six_fields_and_macros_parse_and_others_do_not() {
        assert!(Plan::parse(Some("*/5 * * * *"), None, "UTC").is_ok());
        assert!(Plan::parse(Some("*/10 * * * * *"), None, "UTC").is_ok());
        assert!(Plan::parse(Some("@daily"), None, "UTC").is_ok());
        let midnight = Plan::parse(Some("@midnight"), None, "UTC").unwrap();
        let after = DateTime::parse_from_rfc3339("2027-01-01T10:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            midnight.next_after(after).unwrap().to_rfc3339(),
            "2027-01-02T00:00:00+00:00"
        );
        assert!(Plan::parse(Some("* * *"), None, "UTC").is_err());
        assert!(Plan::parse(Some("0 0 * * * * 2030"), None, "UTC").is_err());
        assert!(Plan::parse(Some("0 3 * * *"), None, "Mars/Olympus").is_err());
        assert!(Plan::parse(None, Some("1h30m"), "UTC").is_ok());
        assert!(Plan::parse(None, Some("0s"), "UTC").is_err());
        assert!(Plan::parse(None, None, "UTC").is_err());
    }

    #[test]
    fn cron_slots_fall_on_whole_seconds() {
        let plan = Plan::parse(Some("*/5 * * * * *"), None, "UTC").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 3).unwrap()
            + chrono::Duration::milliseconds(952);
        assert_eq!(
            plan.next_after(at),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 5).unwrap())
        );
    }

    #[test]
    fn every_falls_on_multiples_since_the_epoch() {
        let plan = Plan::parse(None, Some("30s"), "UTC").unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 10).unwrap();
        assert_eq!(
            plan.next_after(at),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 30).unwrap())
        );
    }

    /// Europe/Paris springs forward on 2026-03-29 at 02:00 (to 03:00) and falls back on
    /// 2026-10-25 at 03:00 (to 02:00).
    #[test]
    fn daylight_saving_gaps_run_once_after_and_repeats_run_once() {
        let plan = Plan::parse(Some("30 2 * * *"), None, "Europe/Paris").unwrap();
        // 02:30 does not exist on the 29th: the slot runs once, right after the gap.
        let next = plan.next_after(utc(2026, 3, 28, 12, 0)).unwrap();
        let after_gap = plan.next_after(utc(2026, 3, 28, 1, 0)).unwrap();
        assert_eq!(after_gap, utc(2026, 3, 28, 1, 30), "the 28th: 02:30 CET");
        assert!(
            next >= utc(2026, 3, 29, 1, 0) && next <= utc(2026, 3, 29, 1, 30),
            "the skipped 02:30 runs once just after 03:00 CEST (01:00 UTC): {next}"
        );
        let following = plan.next_after(next).unwrap();
        assert_eq!(
            following,
            utc(2026, 3, 30, 0, 30),
            "then 02:30 CEST on the 30th"
        );
        // 02:30 happens twice on 25 October: once.
        let first = plan.next_after(utc(2026, 10, 24, 12, 0)).unwrap();
        assert_eq!(first, utc(2026, 10, 25, 0, 30), "02:30 CEST");
        let second = plan.next_after(first).unwrap();
        assert_eq!(
            second,
            utc(2026, 10, 26, 1, 30),
            "not 02:30 CET again the same day"
        );
        // Every 15 minutes through the repeated hour: each wall-clock slot once.
        let quarter = Plan::parse(Some("*/15 * * * *"), None, "Europe/Paris").unwrap();
        let mut at = utc(2026, 10, 24, 23, 50);
        let mut slots = Vec::new();
        while at < utc(2026, 10, 25, 2, 10) {
            at = quarter.next_after(at).unwrap();
            slots.push(at.with_timezone(&chrono_tz::Europe::Paris).naive_local());
        }
        let mut unique = slots.clone();
        unique.dedup();
        assert_eq!(slots, unique, "no wall-clock slot twice");
    }

    #[test]
    fn catch_up_rules_after_downtime() {
        let plan = Plan::parse(Some("0 * * * *"), None, "UTC").unwrap();
        let due = utc(2026, 1, 1, 0, 0);
        let now = utc(2026, 1, 1, 5, 30);
        let (fire, next) = plan.slots(due, now, "latest");
        assert_eq!(fire, vec![utc(2026, 1, 1, 5, 0)]);
        assert_eq!(next, Some(utc(2026, 1, 1, 6, 0)));
        let (fire, _) = plan.slots(due, now, "all");
        assert_eq!(fire.len(), 6);
        let (fire, _) = plan.slots(due, now, "none");
        assert!(fire.is_empty());
        // On time (not downtime): every rule fires the slot.
        let on_time = utc(2026, 1, 1, 0, 0) + chrono::Duration::milliseconds(300);
        for rule in ["latest", "none", "all"] {
            assert_eq!(plan.slots(due, on_time, rule).0, vec![due], "{rule}");
        }
        let every = Plan::parse(None, Some("1s"), "UTC").unwrap();
        let (fire, _) = every.slots(due, due + chrono::Duration::hours(1), "all");
        assert_eq!(fire.len(), MAX_CATCH_UP);
    }
}
