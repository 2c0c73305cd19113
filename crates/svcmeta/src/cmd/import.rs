//! `svcmeta import`: detect each file's format, validate every record, then write in batches.
//!
//! A file is checked completely before anything of it is written, so a bad record anywhere
//! rejects that file with every problem listed and changes nothing.

use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use svcmeta_core::validate;

use crate::backend::{Backend, CommandError};
use crate::cli::ImportArgs;

/// Files with at least this many records get a progress bar.
const PROGRESS_THRESHOLD: usize = 20_000;

/// Most violations printed for one file.
const MAX_REPORTED: usize = 50;

/// Imports every file in turn.
pub(crate) fn run(
    backend: &Backend,
    args: &ImportArgs,
    limits: &svcmeta_core::Limits,
) -> Result<(), CommandError> {
    let batch = args.batch.max(1);
    for path in &args.files {
        let started = Instant::now();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
        let parsed = svcmeta::import::parse(&name, &text)
            .map_err(|e| CommandError::Rejected(e.to_string()))?;
        for warning in &parsed.warnings {
            eprintln!("{name}: {warning}");
        }
        // Check every record first: a file with any invalid record imports nothing. (The
        // valid file is then written in batches; a process killed part-way leaves the
        // batches written so far, and running the import again completes it.)
        let mut problems = Vec::new();
        for (position, draft) in parsed.drafts.iter().enumerate() {
            if let Err(errors) = validate(draft.clone(), limits) {
                let label = if draft.id.is_empty() {
                    format!("record {}", position + 1)
                } else {
                    format!("record {} ({})", position + 1, draft.id)
                };
                for violation in errors.violations {
                    problems.push(format!("  {label}: {violation}"));
                }
            }
        }
        if !problems.is_empty() {
            let total = problems.len();
            problems.truncate(MAX_REPORTED);
            let mut message = format!(
                "{name}: {total} problem(s), nothing imported\n{}",
                problems.join("\n")
            );
            if total > MAX_REPORTED {
                message.push_str(&format!("\n  … and {} more", total - MAX_REPORTED));
            }
            return Err(CommandError::Rejected(message));
        }
        let count = parsed.drafts.len();
        let progress = if count >= PROGRESS_THRESHOLD {
            let bar = ProgressBar::new(count as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} {msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(name.clone());
            Some(bar)
        } else {
            None
        };
        let mut revision = serde_json::Value::Null;
        let mut drafts = parsed.drafts.into_iter().peekable();
        while drafts.peek().is_some() {
            let chunk: Vec<_> = drafts.by_ref().take(batch).collect();
            let chunk_len = chunk.len() as u64;
            let answer = backend.register(chunk)?;
            revision = answer["revision"].clone();
            if let Some(bar) = &progress {
                bar.inc(chunk_len);
            }
        }
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        let seconds = started.elapsed().as_secs_f64();
        super::out!(
            "{name}: imported {count} instances ({}) in {seconds:.2}s, {:.0}/s, revision {revision}",
            parsed.format,
            count as f64 / seconds.max(1e-9)
        );
    }
    Ok(())
}
