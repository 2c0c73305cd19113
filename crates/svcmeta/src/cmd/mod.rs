//! The subcommands: each turns parsed arguments into backend calls and prints the answer.

pub(crate) mod bench;
pub(crate) mod import;
pub(crate) mod query;
pub(crate) mod serve;
pub(crate) mod watch;

use std::io::{Read, Write};

use anyhow::Context;
use serde_json::Value;

use crate::backend::{Backend, CommandError};
use crate::cli::Output;

/// Writes one line to standard output; a closed pipe (`svcmeta query | head -1`) ends the
/// program quietly instead of panicking as `println!` would.
pub(crate) fn emit(line: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .is_err()
    {
        std::process::exit(0);
    }
}

/// `println!` through [`emit`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cmd::emit(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// `register FILE|-`.
pub(crate) fn register(backend: &Backend, file: &str) -> Result<(), CommandError> {
    let mut text = String::new();
    if file == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        text = std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?;
    }
    let parsed =
        svcmeta::import::parse(file, &text).map_err(|e| CommandError::Rejected(e.to_string()))?;
    if parsed.drafts.is_empty() {
        return Err(CommandError::Rejected(format!(
            "{file}: no instances found"
        )));
    }
    let count = parsed.drafts.len();
    let answer = backend.register(parsed.drafts)?;
    out!(
        "registered {count} instance{} (revision {})",
        if count == 1 { "" } else { "s" },
        answer["revision"]
    );
    Ok(())
}

/// `deregister ID`.
pub(crate) fn deregister(backend: &Backend, id: &str) -> Result<(), CommandError> {
    let answer = backend.deregister(id)?;
    out!("deregistered {id} (revision {})", answer["revision"]);
    Ok(())
}

fn join(values: &Value) -> String {
    values
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Prints rows as aligned columns.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (n, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(n) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (n, cell) in cells.iter().enumerate() {
            if n + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[n].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// `services`.
pub(crate) fn services(backend: &Backend, output: Output) -> Result<(), CommandError> {
    let answer = backend.services()?;
    if output == Output::Json {
        out!("{}", serde_json::to_string_pretty(&answer).context("json")?);
        return Ok(());
    }
    let services = answer["services"].as_array().cloned().unwrap_or_default();
    if output == Output::Ids {
        for service in &services {
            out!("{}", service["name"].as_str().unwrap_or_default());
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s["name"].as_str().unwrap_or_default().to_string(),
                s["instances"].to_string(),
                s["passing"].to_string(),
                join(&s["versions"]),
                join(&s["environments"]),
                join(&s["regions"]),
            ]
        })
        .collect();
    print_table(
        &[
            "SERVICE",
            "INSTANCES",
            "PASSING",
            "VERSIONS",
            "ENVIRONMENTS",
            "REGIONS",
        ],
        &rows,
    );
    Ok(())
}

/// `stats`.
pub(crate) fn stats(backend: &Backend, output: Output) -> Result<(), CommandError> {
    let answer = backend.stats()?;
    if output != Output::Table {
        out!("{}", serde_json::to_string_pretty(&answer).context("json")?);
        return Ok(());
    }
    let index = &answer["index"];
    out!("revision            {}", answer["revision"]);
    out!(
        "store               {}",
        answer["store"].as_str().unwrap_or_default()
    );
    out!("instances           {}", answer["instances"]);
    out!("services            {}", answer["services"]);
    out!("index memory bytes  {}", index["index_memory_bytes"]);
    out!("posting lists       {}", index["posting_lists"]);
    out!("over limits         {}", index["instances_over_limits"]);
    out!("queries served      {}", answer["queries"]["queries"]);
    out!(
        "query latency       p50 <= {} us, p99 <= {} us",
        answer["queries"]["p50_us"],
        answer["queries"]["p99_us"]
    );
    out!(
        "cache               {} hits, {} misses, ratio {:.3}",
        answer["cache"]["hits"],
        answer["cache"]["misses"],
        answer["cache"]["hit_ratio"].as_f64().unwrap_or(0.0)
    );
    if let Some(health) = index["health"].as_object() {
        let parts: Vec<String> = health.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out!("health              {}", parts.join(" "));
    }
    for (title, key) in [
        ("environments", "environments"),
        ("regions", "regions"),
        ("versions", "versions"),
        ("tags", "tags"),
    ] {
        let parts: Vec<String> = index[key]
            .as_array()
            .map(|values| {
                values
                    .iter()
                    .map(|v| format!("{}={}", v["value"].as_str().unwrap_or_default(), v["count"]))
                    .collect()
            })
            .unwrap_or_default();
        out!("{title:<20}{}", parts.join(" "));
    }
    Ok(())
}

/// `gen`.
pub(crate) fn gen(
    instances: usize,
    seed: u64,
    out: Option<&std::path::Path>,
) -> Result<(), CommandError> {
    match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
            svcmeta::gen::generate(instances, seed, &mut writer).context("writing the catalog")?;
            std::io::Write::flush(&mut writer).context("writing the catalog")?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let written = svcmeta::gen::generate(instances, seed, &mut writer)
                .and_then(|()| std::io::Write::flush(&mut writer));
            match written {
                // The reader went away (`svcmeta gen … | head`): that is not a failure.
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("writing the catalog")?,
            }
        }
    }
    Ok(())
}
