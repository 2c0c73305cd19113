//! Command-line syntax (clap derive); the doc comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// svcmeta: a service metadata registry with multi-criteria queries over bitmap indexes.
#[derive(Debug, Parser)]
#[command(name = "svcmeta", version, about)]
pub(crate) struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true, env = "SVCMETA_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// Talk to a running server at this URL instead of opening the data directory.
    #[arg(long, global = true, env = "SVCMETA_SERVER")]
    pub(crate) server: Option<String>,

    /// Data directory of the embedded store.
    #[arg(long, global = true, env = "SVCMETA_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,

    /// Store backend: memory, embedded (default) or redis.
    #[arg(long, global = true, env = "SVCMETA_STORE")]
    pub(crate) store: Option<String>,

    /// Redis URL of the redis store (default redis://127.0.0.1:6379/0).
    #[arg(long, global = true, env = "SVCMETA_REDIS_URL")]
    pub(crate) redis_url: Option<String>,

    /// Prefix of the redis store's keys (default svcmeta): nodes with the same prefix share
    /// one registry.
    #[arg(long, global = true, env = "SVCMETA_REDIS_KEY_PREFIX")]
    pub(crate) key_prefix: Option<String>,

    /// The command.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the HTTP server.
    Serve(ServeArgs),
    /// Load Kubernetes manifests, Consul JSON, or native JSON/NDJSON files.
    Import(ImportArgs),
    /// Register (or replace) instances from a JSON/NDJSON file, or `-` for standard input.
    Register {
        /// The file, or `-`.
        file: String,
    },
    /// Remove an instance.
    Deregister {
        /// The instance id.
        id: String,
    },
    /// Find instances matching every given criterion.
    Query(QueryArgs),
    /// Print changes to matching instances as they happen (needs --server).
    Watch(WatchArgs),
    /// List services with their instance counts.
    Services {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Show registry statistics.
    Stats {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Write a realistic synthetic catalog as NDJSON (for benchmarks).
    Gen {
        /// Number of instances.
        #[arg(long)]
        instances: usize,
        /// Random seed; the same seed gives the same catalog.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (standard output when absent).
        #[arg(long, short = 'o')]
        out: Option<PathBuf>,
    },
    /// Benchmark svcmeta against SQLite and a linear scan on a generated catalog.
    Bench(BenchArgs),
    /// Benchmark the redis store: several nodes sharing one Redis.
    BenchRedis(RedisBenchArgs),
}

/// Options of `serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8500, Consul's port).
    #[arg(long, env = "SVCMETA_LISTEN")]
    pub(crate) listen: Option<String>,
}

/// Options of `import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Files to import; the format of each is detected.
    #[arg(required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Instances per write request.
    #[arg(long, default_value_t = 5000)]
    pub(crate) batch: usize,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns.
    Table,
    /// JSON as the API returns it.
    Json,
    /// One instance id per line.
    Ids,
}

/// The criteria of a query or a watch.
#[derive(Debug, Args)]
pub(crate) struct Criteria {
    /// Service name (case-insensitive).
    #[arg(long)]
    pub(crate) service: Option<String>,
    /// Environment.
    #[arg(long)]
    pub(crate) env: Option<String>,
    /// Region.
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Tag the instance must have (repeatable: all of them).
    #[arg(long)]
    pub(crate) tag: Vec<String>,
    /// Tag of which at least one must be present (repeatable).
    #[arg(long)]
    pub(crate) tag_any: Vec<String>,
    /// Tag that must be absent (repeatable).
    #[arg(long)]
    pub(crate) tag_not: Vec<String>,
    /// Version, exact (`v2`) or a range (`>=2.3`, `^2`, `~1.4`, `>=1.0, <2.0`).
    #[arg(long)]
    pub(crate) version: Option<String>,
    /// Meta criterion `KEY=VALUE`, or `KEY` for presence (repeatable).
    #[arg(long)]
    pub(crate) meta: Vec<String>,
    /// Health: passing, warning or critical.
    #[arg(long)]
    pub(crate) health: Option<String>,
    /// Filter expression (Consul syntax).
    #[arg(long)]
    pub(crate) filter: Option<String>,
}

/// Options of `query`.
#[derive(Debug, Args)]
pub(crate) struct QueryArgs {
    /// What to match.
    #[command(flatten)]
    pub(crate) criteria: Criteria,
    /// Print only the number of matches.
    #[arg(long)]
    pub(crate) count: bool,
    /// Print the plan the query ran.
    #[arg(long)]
    pub(crate) explain: bool,
    /// Return at most this many instances (default: all, fetched page by page).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

/// Options of `watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// What to watch.
    #[command(flatten)]
    pub(crate) criteria: Criteria,
    /// Replay changes after this revision first (default: only new changes).
    #[arg(long)]
    pub(crate) since: Option<u64>,
    /// Output format (`table` prints one line per change, `json` one JSON event per line).
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
    /// Stop after this many changes (default: run until interrupted).
    #[arg(long)]
    pub(crate) max_events: Option<u64>,
}

/// Options of `bench`.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Number of generated instances.
    #[arg(long)]
    pub(crate) instances: usize,
    /// Random seed of the catalog and of the query mix.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Directory for the embedded store and the SQLite file (default: the system temp
    /// directory); the durable figures are those of its disk.
    #[arg(long)]
    pub(crate) dir: Option<PathBuf>,
    /// Distinct queries per query class.
    #[arg(long, default_value_t = 2000)]
    pub(crate) queries: usize,
    /// Seconds of each HTTP load run.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) http_seconds: f64,
    /// Keep-alive connections of the HTTP load generator (one request in flight on each).
    #[arg(long, default_value_t = 8)]
    pub(crate) http_connections: usize,
    /// Client threads of the HTTP load generator (event loops sharing the connections).
    #[arg(long, default_value_t = 1)]
    pub(crate) http_client_threads: usize,
    /// Blocking queries to park at once (capped by the open-file limit; 0 skips the run).
    #[arg(long, default_value_t = 100_000)]
    pub(crate) parked_queries: usize,
    /// Only park the HTTP/1.1 blocking queries and print their figures as JSON: the bench
    /// runs itself so, in a child process, for a fresh heap.
    #[arg(long, hide = true)]
    pub(crate) parked_http1_only: bool,
}

/// Options of `bench-redis`.
#[derive(Debug, Args)]
pub(crate) struct RedisBenchArgs {
    /// Instances loaded (through one node) before a new node catches up with them.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) instances: usize,
    /// Random seed of the generated catalog.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// The Redis to use; the run's keys get a fresh prefix and are deleted at the end.
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    pub(crate) redis_url: String,
    /// Replication-lag probes per run (idle, and under load).
    #[arg(long, default_value_t = 1000)]
    pub(crate) probes: usize,
    /// Seconds of each concurrent-writer run.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) seconds: f64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}
