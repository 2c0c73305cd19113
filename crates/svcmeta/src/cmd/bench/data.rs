//! The benchmark's data: `svcmeta gen` records, parsed and validated as the import path does,
//! handed out in batches without ever holding the whole catalog as text or drafts.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use svcmeta_core::{validate, InstanceDraft, Limits, Registration};

/// Splits the generator's output into lines and hands each to a callback.
struct LineSink<F: FnMut(&[u8]) -> io::Result<()>> {
    pending: Vec<u8>,
    on_line: F,
}

impl<F: FnMut(&[u8]) -> io::Result<()>> Write for LineSink<F> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            if self.pending.is_empty() {
                (self.on_line)(&rest[..end])?;
            } else {
                self.pending.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.pending);
                (self.on_line)(&line)?;
            }
            rest = &rest[end + 1..];
        }
        self.pending.extend_from_slice(rest);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            (self.on_line)(&line)?;
        }
        Ok(())
    }
}

/// What producing the registrations cost, apart from what the consumer did with them.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Produced {
    /// Registrations produced.
    pub(crate) count: usize,
    /// Time spent generating, parsing and validating (the consumer's time excluded).
    pub(crate) produce: Duration,
}

/// Generates `instances` records with `seed`, parses and validates each (prefixing its id
/// with `id_prefix`), and calls `consume` with every full batch of `batch` registrations
/// and with the last, partial one.
pub(crate) fn for_each_batch(
    instances: usize,
    seed: u64,
    id_prefix: &str,
    batch: usize,
    limits: &Limits,
    mut consume: impl FnMut(Vec<Registration>) -> anyhow::Result<()>,
) -> anyhow::Result<Produced> {
    let started = Instant::now();
    let mut consumed = Duration::ZERO;
    let mut count = 0usize;
    let mut current: Vec<Registration> = Vec::with_capacity(batch);
    let mut failure: Option<anyhow::Error> = None;
    {
        let mut on_line = |line: &[u8]| -> io::Result<()> {
            let mut draft: InstanceDraft =
                serde_json::from_slice(line).map_err(io::Error::other)?;
            if !id_prefix.is_empty() {
                draft.id.insert_str(0, id_prefix);
            }
            let registration =
                validate(draft, limits).map_err(|e| io::Error::other(e.to_string()))?;
            current.push(registration);
            count += 1;
            if current.len() == batch {
                let full = std::mem::replace(&mut current, Vec::with_capacity(batch));
                let began = Instant::now();
                let result = consume(full);
                consumed += began.elapsed();
                if let Err(error) = result {
                    failure = Some(error);
                    return Err(io::Error::other("the consumer failed"));
                }
            }
            Ok(())
        };
        let mut sink = LineSink {
            pending: Vec::new(),
            on_line: &mut on_line,
        };
        let generated = svcmeta::gen::generate(instances, seed, &mut sink);
        if let Some(error) = failure.take() {
            return Err(error);
        }
        generated.context("generating the catalog")?;
    }
    if !current.is_empty() {
        let began = Instant::now();
        consume(std::mem::take(&mut current))?;
        consumed += began.elapsed();
    }
    Ok(Produced {
        count,
        produce: started.elapsed().saturating_sub(consumed),
    })
}

/// Every registration of a generated catalog at once (for small samples only).
pub(crate) fn collect(
    instances: usize,
    seed: u64,
    id_prefix: &str,
    limits: &Limits,
) -> anyhow::Result<Vec<Registration>> {
    let mut all = Vec::with_capacity(instances);
    for_each_batch(instances, seed, id_prefix, 10_000, limits, |batch| {
        all.extend(batch);
        Ok(())
    })?;
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_record_once_with_the_prefix() {
        let limits = Limits::standard();
        let mut sizes = Vec::new();
        let mut ids = std::collections::HashSet::new();
        let produced = for_each_batch(2_345, 3, "x-", 1_000, &limits, |batch| {
            sizes.push(batch.len());
            for registration in &batch {
                assert!(registration.id().starts_with("x-"));
                ids.insert(registration.id().to_string());
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(produced.count, 2_345);
        assert_eq!(sizes, [1_000, 1_000, 345]);
        assert_eq!(ids.len(), 2_345);
        assert_eq!(collect(10, 3, "", &limits).unwrap().len(), 10);
    }

    #[test]
    fn a_failing_consumer_stops_the_run_with_its_error() {
        let error = for_each_batch(100, 1, "", 10, &Limits::standard(), |_| {
            anyhow::bail!("full")
        })
        .unwrap_err();
        assert_eq!(error.to_string(), "full");
    }
}
