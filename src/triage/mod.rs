//! `checkout triage`: the article's debugging process as one command. It streams
//! JSON logs (files, gzip or stdin), optionally asks a running instance, walks the
//! decision tree, and prints the category, the evidence that decided it, the error
//! groups, the resources, and the fix. `--error-id` prints one error's request.
//!
//! - [`read`]: records from files or stdin, parsed without copying;
//! - [`facts`]: what a stream of records amounts to, in bounded memory;
//! - [`live`]: what a running instance says about itself now;
//! - [`decide`]: the decision tree.

pub mod decide;
pub mod facts;
pub mod live;
pub mod read;

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::clock::{Clock, parse_rfc3339_ms, rfc3339_ms};
use decide::{Verdict, decide};
use facts::Facts;
use live::Live;

/// What to triage.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Log files (`-` for standard input).
    pub logs: Vec<String>,
    /// A running instance to ask.
    pub url: Option<String>,
    /// Only the last this-long of the logs (before the newest record; before now for stdin).
    pub since: Option<Duration>,
    /// One JSON document instead of text.
    pub json: bool,
    /// Print this error's request instead.
    pub error_id: Option<String>,
}

/// The newest timestamp in the files, read from the start of each line.
fn newest_timestamp(sources: &[String]) -> io::Result<Option<i64>> {
    let mut newest = None;
    for source in sources {
        let mut input = read::open(source)?;
        let mut line = String::new();
        loop {
            line.clear();
            if input.read_line(&mut line)? == 0 {
                break;
            }
            if let Some(ms) = read::quick_timestamp(&line).and_then(parse_rfc3339_ms) {
                newest = Some(newest.map_or(ms, |n: i64| n.max(ms)));
            }
        }
    }
    Ok(newest)
}

/// Reads every source into facts, keeping records newer than `since` allows.
pub fn analyze(sources: &[String], since: Option<Duration>) -> io::Result<Facts> {
    let cutoff = match since {
        None => None,
        Some(span) => {
            let span = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
            let end = if sources.iter().any(|s| s == "-") {
                Some(Clock::system().now_ms())
            } else {
                newest_timestamp(sources)?
            };
            end.map(|end| end - span)
        }
    };
    let mut facts = Facts::default();
    for source in sources {
        let input = read::open(source).map_err(|e| io::Error::new(e.kind(), format!("{source}: {e}")))?;
        let skipped = read::for_each_record(input, |record, _| {
            if let Some(cutoff) = cutoff
                && record
                    .timestamp
                    .as_deref()
                    .and_then(parse_rfc3339_ms)
                    .is_some_and(|at| at < cutoff)
            {
                return;
            }
            facts.add(record);
        })?;
        facts.skipped += skipped;
    }
    Ok(facts)
}

/// Runs triage and writes the report to `out`.
pub async fn run(options: &Options, out: &mut dyn Write) -> io::Result<()> {
    if let Some(error_id) = &options.error_id {
        return print_request(&options.logs, error_id, out);
    }
    let facts = analyze(&options.logs, options.since)?;
    let live = match &options.url {
        Some(url) => Some(live::fetch(url).await),
        None => None,
    };
    let verdict = decide(&facts, live.as_ref());
    if options.json {
        let document = to_json(&verdict, &facts, live.as_ref());
        writeln!(out, "{}", serde_json::to_string_pretty(&document).unwrap_or_default())
    } else {
        out.write_all(to_text(&verdict, &facts, live.as_ref()).as_bytes())
    }
}

fn resources_json(facts: &Facts, live: Option<&Live>) -> Value {
    let reading = |at: i64, value: Value| json!({"at": rfc3339_ms(at), "value": value});
    json!({
        "databasePool": facts.worst_pool.as_ref().map(|r| reading(r.at_ms, json!(r.value))),
        "databasePoolLatest": facts.latest_pool.as_ref().map(|r| reading(r.at_ms, json!(r.value))),
        "memory": facts.worst_memory.as_ref().map(|r| reading(r.at_ms, json!(r.value))),
        "disk": facts.worst_disk.as_ref().map(|r| reading(r.at_ms, json!(r.value))),
        "fileDescriptors": facts.worst_fds.as_ref().map(|r| reading(r.at_ms, json!(r.value))),
        "live": live.map(|l| json!({
            "url": l.url,
            "databasePool": l.pool,
            "memoryUsageRatio": l.memory_ratio,
            "diskUsageRatio": l.disk_ratio,
            "fileDescriptors": l.fds,
            "health": l.health_status,
            "healthError": l.health_error,
            "openCircuits": l.breakers,
            "firingAlerts": l.firing,
        })),
    })
}

/// The report as one JSON document.
pub fn to_json(verdict: &Verdict, facts: &Facts, live: Option<&Live>) -> Value {
    let groups: Vec<Value> = facts
        .groups_by_size()
        .iter()
        .map(|g| {
            json!({
                "errorClass": g.error_class,
                "message": g.message,
                "cause": g.cause,
                "status": g.status,
                "dependency": g.dependency,
                "count": g.count,
                "firstSeen": rfc3339_ms(g.first_ms),
                "lastSeen": rfc3339_ms(g.last_ms),
                "endpoints": g.endpoints,
                "sampleErrorIds": g.sample_ids,
            })
        })
        .collect();
    json!({
        "category": verdict.category.as_str(),
        "summary": verdict.summary,
        "onset": verdict.onset_ms.map(rfc3339_ms),
        "evidence": verdict.evidence,
        "rootCause": verdict.root_cause,
        "symptoms": verdict.symptoms,
        "errorGroups": groups,
        "resources": resources_json(facts, live),
        "deploys": facts.startups.iter().map(|s| json!({
            "at": rfc3339_ms(s.at_ms),
            "version": s.version,
            "schemaVersion": s.schema_version,
        })).collect::<Vec<_>>(),
        "counts": {
            "records": facts.records,
            "skippedLines": facts.skipped,
            "requests": facts.requests,
            "errors4xx": facts.errors_4xx,
            "errors5xx": facts.errors_5xx,
        },
        "window": {
            "from": facts.first_ms.map(rfc3339_ms),
            "to": facts.last_ms.map(rfc3339_ms),
        },
        "fix": verdict.fix,
    })
}

/// The report as text for a person.
pub fn to_text(verdict: &Verdict, facts: &Facts, live: Option<&Live>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "category: {}", verdict.category.as_str());
    let _ = writeln!(out, "{}", verdict.summary);
    let _ = writeln!(
        out,
        "\nread {} records ({} to {}){}",
        facts.records,
        facts.first_ms.map(rfc3339_ms).unwrap_or_else(|| "-".into()),
        facts.last_ms.map(rfc3339_ms).unwrap_or_else(|| "-".into()),
        if facts.skipped > 0 {
            format!(", skipped {} lines that are not records", facts.skipped)
        } else {
            String::new()
        }
    );
    if let Some(onset) = verdict.onset_ms {
        let _ = writeln!(out, "onset: {}", rfc3339_ms(onset));
    }
    let _ = writeln!(out, "\nevidence:");
    for line in &verdict.evidence {
        let _ = writeln!(out, "  - {line}");
    }
    if let Some(cause) = &verdict.root_cause {
        let _ = writeln!(out, "\nroot cause: {cause}");
    }
    let groups = facts.groups_by_size();
    if !groups.is_empty() {
        let _ = writeln!(out, "\nerror groups (5xx), largest first:");
        for group in groups.iter().take(10) {
            let _ = writeln!(out, "  - {}", decide::group_line(group));
        }
        if groups.len() > 10 {
            let _ = writeln!(out, "  ... and {} more groups", groups.len() - 10);
        }
    }
    let _ = writeln!(out, "\nresources:");
    let mut any = false;
    if let Some(pool) = &facts.worst_pool {
        any = true;
        let p = pool.value;
        let _ = writeln!(
            out,
            "  database pool     worst {} of {} in use, {} waiting, {} acquire timeouts (at {})",
            p.active,
            p.max,
            p.pending,
            p.acquire_timeouts,
            rfc3339_ms(pool.at_ms)
        );
    }
    if let Some(memory) = &facts.worst_memory {
        any = true;
        let _ = writeln!(
            out,
            "  memory            worst {:.0}% of the {} limit (at {})",
            memory.value.usage_ratio * 100.0,
            memory.value.source,
            rfc3339_ms(memory.at_ms)
        );
    }
    if let Some(disk) = &facts.worst_disk {
        any = true;
        let _ = writeln!(
            out,
            "  disk              worst {:.0}% of {} (at {})",
            disk.value.usage_ratio * 100.0,
            disk.value.path,
            rfc3339_ms(disk.at_ms)
        );
    }
    if let Some(fds) = &facts.worst_fds {
        any = true;
        let _ = writeln!(
            out,
            "  file descriptors  worst {} of {} open (at {})",
            fds.value.open,
            fds.value.max,
            rfc3339_ms(fds.at_ms)
        );
    }
    if let Some(live) = live {
        any = true;
        if let Some(p) = live.pool {
            let _ = writeln!(
                out,
                "  live pool         {} of {} in use, {} waiting, {} acquire timeouts",
                p.active, p.max, p.pending, p.acquire_timeouts
            );
        }
        if let Some(ratio) = live.memory_ratio {
            let _ = writeln!(out, "  live memory       {:.0}% of its limit", ratio * 100.0);
        }
        if let Some(ratio) = live.disk_ratio {
            let _ = writeln!(out, "  live disk         {:.0}% used", ratio * 100.0);
        }
    }
    if !any {
        let _ = writeln!(
            out,
            "  no resources records in the window (pass --url to read a live instance)"
        );
    }
    let _ = writeln!(out, "\nfix:\n  {}", verdict.fix);
    out
}

/// Prints the record of `error_id` and every record of the same request.
fn print_request(sources: &[String], error_id: &str, out: &mut dyn Write) -> io::Result<()> {
    let from_stdin = sources.iter().any(|s| s == "-");
    let mut request_id: Option<String> = None;
    // Standard input can be read once: keep a window of recent lines and follow the
    // request forward from the error; files are read twice instead.
    let mut recent: std::collections::VecDeque<(Option<String>, String)> = std::collections::VecDeque::new();
    let mut printed = Vec::new();
    for source in sources {
        read::for_each_record(read::open(source)?, |record, line| {
            let id = record.request_id.as_deref().map(str::to_string);
            if request_id.is_none() {
                if record.error_id.as_deref() == Some(error_id) {
                    request_id = id.clone();
                    if from_stdin {
                        printed.extend(
                            recent
                                .iter()
                                .filter(|(rid, _)| rid.is_some() && *rid == id)
                                .map(|(_, l)| l.clone()),
                        );
                        printed.push(line.to_string());
                    }
                } else if from_stdin {
                    recent.push_back((id, line.to_string()));
                    if recent.len() > 100_000 {
                        recent.pop_front();
                    }
                }
            } else if from_stdin && id.is_some() && id == request_id {
                printed.push(line.to_string());
            }
        })?;
    }
    let Some(request_id) = request_id else {
        writeln!(out, "no record has errorId {error_id}")?;
        return Ok(());
    };
    if !from_stdin {
        for source in sources {
            read::for_each_record(read::open(source)?, |record, line| {
                if record.request_id.as_deref() == Some(request_id.as_str()) {
                    printed.push(line.to_string());
                }
            })?;
        }
    }
    writeln!(out, "{} records of request {request_id}:", printed.len())?;
    for line in printed {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
