//! polymq-crashkid: a store client that exists to be killed with SIGKILL.
//!
//! Usage: `polymq-crashkid <data_dir> <append|mixed> [run-id]`
//!
//! Opens the store in `<data_dir>` with `fsync=always` and 256 KiB segments
//! (so every run rolls a few), declares queue `q` and stream `s`,
//! prints `READY`, then appends forever from several tasks. Each message goes
//! to both `q` and `s` in one append (stored once, indexed twice), and its
//! payload names the task and a per-task sequence number:
//!
//! `seq:<task>:<n>:<len>:` followed by `len` filler bytes, byte `j` being
//! `b'a' + (n + j) % 26`, so a reader can check a message is exactly what was
//! written. `<task>` is `<run-id>.<i>`; the run id keeps sequence spaces of
//! successive runs on the same data dir apart.
//!
//! A line `ACK <task> <n>` is printed only after that append's future
//! completed, i.e. after the store promised it is durable. In `mixed` mode
//! other tasks pop from `q` and ack, printing `POP <task> <n>` before calling
//! `ack` and `POPACK <task> <n>` only after `ack().await` returned. Every line is written whole and flushed at once, so
//! the parent sees exactly the acknowledgements that happened before the kill.
//!
//! Anything unexpected (a failed append, a malformed message) ends the
//! process with a non-zero status and a message on stderr, which the parent
//! tells apart from its own SIGKILL.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use polymq::queue::NackAction;
use polymq::queue::{QueueId, QueueOptions};
use polymq::record::Message;
use polymq::{FsyncPolicy, Store, StoreConfig};

/// This binary gets only the package's normal dependencies, not its
/// dev-dependencies (so not anyhow); a boxed error serves the same purpose.
type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T> = std::result::Result<T, Error>;

const APPENDERS: u64 = 8;
const POPPERS: u64 = 2;
/// Small segments (the minimum is 64 KiB) so every run rolls a few times
/// and some kills land in the middle of a roll.
const SEGMENT_BYTES: u64 = 256 * 1024;
/// Filler lengths vary over 0..=FILLER_MAX so records differ in size and
/// segment rolls and torn writes land at varied offsets.
const FILLER_MAX: u64 = 2000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polymq-crashkid: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Appenders only.
    Append,
    /// Appenders and poppers that ack what they pop.
    Mixed,
    /// Queue-only traffic on small segments with maintenance every 20 ms;
    /// every 20th message is parked (requeued with a 1 h delay) so old
    /// segments stay partly live and must be compacted to be reclaimed.
    Churn,
}

/// Churn mode parks every PARK_EVERY-th message of a task.
const PARK_EVERY: u64 = 20;

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 || args.len() > 4 {
        return Err("usage: polymq-crashkid <data_dir> <append|mixed|churn> [run-id]".into());
    }
    let mode = match args[2].as_str() {
        "append" => Mode::Append,
        "mixed" => Mode::Mixed,
        "churn" => Mode::Churn,
        other => return Err(format!("unknown mode {other:?}: expected append, mixed or churn").into()),
    };
    let seed = seed();
    let run_id = match args.get(3) {
        Some(r) if !r.is_empty() && !r.contains([':', ' ']) => r.clone(),
        Some(r) => return Err(format!("run id {r:?} must be non-empty, without ':' or spaces").into()),
        None => format!("p{}x{:x}", std::process::id(), seed & 0xffff),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(args[1].clone(), mode, run_id, seed))
}

async fn serve(data_dir: String, mode: Mode, run_id: String, seed: u64) -> Result<()> {
    let mut cfg = StoreConfig::new(&data_dir);
    cfg.fsync = FsyncPolicy::Always;
    cfg.segment_bytes = SEGMENT_BYTES;
    if mode == Mode::Churn {
        cfg.segment_bytes = 64 * 1024;
        cfg.maintenance_interval = Duration::from_millis(20);
    }
    let store = Store::open(cfg).map_err(|e| format!("open {data_dir}: {e}"))?;
    let targets: Vec<QueueId> = if mode == Mode::Churn {
        vec![store.declare_queue("c", QueueOptions::default()).await?.id]
    } else {
        let q = store.declare_queue("q", QueueOptions::default()).await?.id;
        let s = store.declare_queue("s", QueueOptions::stream()).await?.id;
        vec![q, s]
    };
    let q = targets[0];
    say("READY")?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..APPENDERS {
        let task = format!("{run_id}.{i}");
        let rng = Rng::new(seed ^ (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        tasks.spawn(append_forever(store.clone(), task, targets.clone(), rng));
    }
    if mode != Mode::Append {
        for _ in 0..POPPERS {
            tasks.spawn(pop_forever(store.clone(), q, mode == Mode::Churn));
        }
    }
    // The tasks only end by failing; the first failure ends the process.
    match tasks.join_next().await {
        Some(Ok(Err(e))) => Err(e),
        Some(Ok(Ok(()))) | None => Err("a worker stopped without an error".into()),
        Some(Err(e)) => Err(format!("a worker panicked: {e}").into()),
    }
}

async fn append_forever(store: Arc<Store>, task: String, targets: Vec<QueueId>, mut rng: Rng) -> Result<()> {
    for n in 0u64.. {
        let len = rng.below(FILLER_MAX + 1) as usize;
        store.append(Message::new(payload(&task, n, len)), &targets).await.map_err(|e| format!("append {task}:{n}: {e}"))?;
        say(&format!("ACK {task} {n}"))?;
        // Half the time straight on, half the time a 1-4 ms pause: bursts
        // that make big group-commit batches, and a volume the parent can
        // read back in full after every kill in a debug build.
        let pause = rng.below(8);
        if pause >= 4 {
            tokio::time::sleep(Duration::from_millis(pause - 3)).await;
        }
    }
    Ok(())
}

async fn pop_forever(store: Arc<Store>, q: QueueId, park: bool) -> Result<()> {
    loop {
        // Long invisibility: within one run nothing is redelivered, so each
        // POPACK is the one delivery of that message in this process.
        let batch = store.pop(q, 16, Duration::from_secs(600), Duration::from_millis(100)).await.map_err(|e| format!("pop: {e}"))?;
        for d in batch {
            let (task, n) = parse(&d.message.payload).ok_or_else(|| format!("popped a malformed message at offset {}", d.offset))?;
            if park && n % PARK_EVERY == 0 {
                // Stays in the queue (delayed), pinning its segment until compaction copies it.
                store.nack(d.receipt, NackAction::Requeue { delay_ms: 3_600_000 }).await.map_err(|e| format!("park {task}:{n}: {e}"))?;
                continue;
            }
            // Said before the ack is sent: the ack record can become durable
            // before ack() returns, so from here on the message may be gone
            // after a kill even though POPACK was never printed.
            say(&format!("POP {task} {n}"))?;
            store.ack(d.receipt).await.map_err(|e| format!("ack {task}:{n}: {e}"))?;
            say(&format!("POPACK {task} {n}"))?;
        }
    }
}

fn payload(task: &str, n: u64, len: usize) -> Bytes {
    let mut p = format!("seq:{task}:{n}:{len}:").into_bytes();
    p.extend((0..len).map(|j| b'a' + ((n as usize + j) % 26) as u8));
    Bytes::from(p)
}

/// The task and sequence number of a payload, if it is exactly what
/// [`payload`] makes for them.
fn parse(p: &[u8]) -> Option<(String, u64)> {
    let mut parts = p.splitn(5, |&b| b == b':');
    if parts.next()? != b"seq" {
        return None;
    }
    let task = std::str::from_utf8(parts.next()?).ok()?.to_owned();
    let n: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let len: usize = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let filler = parts.next()?;
    let intact = filler.len() == len && filler.iter().enumerate().all(|(j, &b)| b == b'a' + ((n as usize + j) % 26) as u8);
    intact.then_some((task, n))
}

/// Writes one whole line and flushes it before returning, so a line the
/// parent reads is an event that already happened. A closed pipe (the parent
/// is gone) is an error, which ends this process instead of orphaning it.
fn say(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes())?;
    out.flush()?;
    Ok(())
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// xorshift64: filler lengths only need to vary, not to be good random numbers,
/// and the binary cannot use the `rand` dev-dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}
