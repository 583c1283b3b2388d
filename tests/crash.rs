//! kill -9 at random moments: a child process (`polymq-crashkid`) appends with
//! `fsync=always` from several tasks, and in some runs pops and acks, printing
//! each acknowledgement only after the store gave it. It is killed with
//! SIGKILL at a random point, restarted on the same data dir, killed again,
//! many times. After every kill the store is opened in this process and must
//! hold every acknowledged append exactly once, in each task's order, in the
//! stream `s`; the queue `q` must hold, exactly once, every acknowledged
//! append that no kid ever tried to ack; an acknowledged pop never comes back.
//!
//! Between "tried to ack" (`POP`) and "ack acknowledged" (`POPACK`) either
//! outcome is correct: the ack record can be fsynced before the kid is told,
//! exactly as an append can be durable without its `ACK` line.
//!
//! `POLYMQ_CRASH_ITERATIONS` sets the number of kills (default 20, a few
//! seconds in a debug build); `POLYMQ_CRASH_SEED` replays a run's timings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use polymq::clock::ManualClock;
use polymq::{FsyncPolicy, Store, StoreConfig};
use rand::{Rng, SeedableRng};

/// (task, sequence number), as the kid prints it and writes it in payloads.
type Id = (String, u64);

/// A child that is killed and reaped however the test ends, so a failed
/// assertion or a panic never leaves a process behind.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What one run of the kid acknowledged before it was killed.
#[derive(Default)]
struct RunLog {
    acked: Vec<Id>,
    /// Popped and about to be acked.
    popped: Vec<Id>,
    popacked: Vec<Id>,
}

/// Parses the kid's stdout. Only whole lines count: a line cut off by the
/// kill (no newline) could read as another sequence number, so it is ignored,
/// which is always safe (it only claims less).
fn parse_line(line: &[u8], log: &mut RunLog) {
    let Some(line) = line.strip_suffix(b"\n") else { return };
    let line = std::str::from_utf8(line).expect("kid prints UTF-8");
    let mut w = line.split(' ');
    let (kind, task, n) = (w.next(), w.next(), w.next().and_then(|n| n.parse::<u64>().ok()));
    match (kind, task, n, w.next()) {
        (Some("ACK"), Some(t), Some(n), None) => log.acked.push((t.to_owned(), n)),
        (Some("POP"), Some(t), Some(n), None) => log.popped.push((t.to_owned(), n)),
        (Some("POPACK"), Some(t), Some(n), None) => log.popacked.push((t.to_owned(), n)),
        _ => panic!("unexpected line from the kid: {line:?}"),
    }
}

/// Runs the kid on `dir` in `mode`, kills it with SIGKILL `delay` after it
/// printed READY, and returns what it acknowledged.
fn run_and_kill(dir: &Path, mode: &str, run_id: &str, delay: Duration) -> RunLog {
    let mut child = Command::new(env!("CARGO_BIN_EXE_polymq-crashkid"))
        .arg(dir)
        .arg(mode)
        .arg(run_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn polymq-crashkid");
    let stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let mut guard = KillOnDrop(Some(child));
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let ready = rx.recv_timeout(Duration::from_secs(120));
    let ready_ok = matches!(&ready, Ok(l) if l.as_slice() == b"READY\n");
    if ready_ok {
        std::thread::sleep(delay);
    }
    let child = guard.0.as_mut().expect("child");
    // A kid that already exited is a zombie until waited for, so this still
    // succeeds and wait() below reports how it really ended.
    child.kill().expect("SIGKILL the kid");
    let status = child.wait().expect("reap the kid");
    guard.0 = None;
    reader.join().expect("stdout reader");
    let err = err_reader.join().expect("stderr reader");
    assert!(ready_ok, "the kid ({mode}) did not start: first line {ready:?}, status {status}, stderr: {err}");
    assert_eq!(status.signal(), Some(SIGKILL), "the kid ({mode}) ended before it was killed: {status}, stderr: {err}");
    let mut log = RunLog::default();
    for line in rx.try_iter() {
        parse_line(&line, &mut log);
    }
    log
}

/// Signal number of SIGKILL on Linux and the BSDs.
const SIGKILL: i32 = 9;

/// The kid's payload format: `seq:<task>:<n>:<len>:` then `len` filler bytes,
/// byte j being `b'a' + (n + j) % 26`. Returns the id if the payload is
/// exactly what the kid wrote for it.
fn parse_payload(p: &[u8]) -> Option<Id> {
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

/// Everything the kids acknowledged so far, across runs.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<Id>,
    popped: BTreeSet<Id>,
    popacked: BTreeSet<Id>,
}

/// What one in-process look at the store found.
#[derive(Default, Debug)]
struct Check {
    in_stream: usize,
    in_queue: usize,
    /// Acknowledged appends found in `s`.
    acked_present: usize,
    /// Torn tail bytes the in-process open cut (a kill in the middle of a write).
    truncated_bytes: u64,
    /// Acked appends missing from `s`, or (never popped) from `q`.
    lost: usize,
    /// Messages present more than once in `s` or in `q`.
    duplicated: usize,
    /// Acked pops present in `q` again.
    came_back: usize,
    /// Popped, ack sent but not acknowledged to the kid, and gone from `q`:
    /// the ack was durable before the kill (allowed, counted to show it happens).
    acks_durable_unannounced: usize,
    problems: Vec<String>,
}

fn cfg(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.fsync = FsyncPolicy::Always;
    // As the kid has it, so appends after this check roll at the same points.
    c.segment_bytes = 256 * 1024;
    c.maintenance_interval = Duration::ZERO;
    c
}

/// Opens the store the kid left behind, compares it with the ledger, and
/// closes it again (without acking anything, so the queue is unchanged).
fn check(dir: &Path, ledger: &Ledger) -> Check {
    let store = Store::open(cfg(dir)).unwrap_or_else(|e| panic!("the store must open after kill -9: {e}"));
    let mut c = Check { truncated_bytes: store.recovery().truncated_bytes, ..Check::default() };
    let note = |c: &mut Check, p: String| {
        if c.problems.len() < 20 {
            c.problems.push(p);
        }
    };
    let s = store.queue_id("s").expect("stream s was declared before READY");
    let q = store.queue_id("q").expect("queue q was declared before READY");

    // The stream, in offset order: each message intact, each task's
    // sequence numbers strictly increasing (which also rules out duplicates
    // within a task).
    let mut in_s: HashMap<Id, usize> = HashMap::new();
    let mut last_of_task: HashMap<String, u64> = HashMap::new();
    let mut from = 0;
    loop {
        let r = store.read(s, from, 4096, u64::MAX).expect("read s");
        if r.messages.is_empty() {
            break;
        }
        for m in r.messages {
            from = m.offset + 1;
            let Some(id) = parse_payload(&m.message.payload) else {
                note(&mut c, format!("s offset {} holds a malformed or altered message", m.offset));
                continue;
            };
            if let Some(prev) = last_of_task.insert(id.0.clone(), id.1) {
                if id.1 <= prev {
                    note(&mut c, format!("s offset {}: {}:{} follows {}:{}", m.offset, id.0, id.1, id.0, prev));
                }
            }
            *in_s.entry(id).or_default() += 1;
        }
    }

    // The queue, by popping everything once. Pops are not durable, so closing
    // without acking leaves the queue as it was for the next run.
    let mut in_q: HashMap<Id, usize> = HashMap::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        loop {
            let batch = store.pop(q, 1024, Duration::from_secs(3600), Duration::ZERO).await.expect("pop q");
            if batch.is_empty() {
                break;
            }
            for d in batch {
                match parse_payload(&d.message.payload) {
                    Some(id) => *in_q.entry(id).or_default() += 1,
                    None => note(&mut c, format!("q offset {} holds a malformed or altered message", d.offset)),
                }
            }
        }
    });
    store.close().expect("close");
    drop(store);

    c.in_stream = in_s.values().sum();
    c.in_queue = in_q.values().sum();
    for (id, &n) in in_s.iter().filter(|(_, &n)| n > 1) {
        c.duplicated += n - 1;
        note(&mut c, format!("{}:{} is in s {n} times", id.0, id.1));
    }
    for (id, &n) in &in_q {
        if n > 1 {
            c.duplicated += n - 1;
            note(&mut c, format!("{}:{} is in q {n} times", id.0, id.1));
        }
        if !in_s.contains_key(id) {
            // One record feeds both: a message cannot be in q and not in s.
            note(&mut c, format!("{}:{} is in q but not in s", id.0, id.1));
        }
    }
    for id in &ledger.acked {
        if in_s.contains_key(id) {
            c.acked_present += 1;
        } else {
            c.lost += 1;
            note(&mut c, format!("acked {}:{} is missing from s", id.0, id.1));
        }
        if ledger.popped.contains(id) && !ledger.popacked.contains(id) && !in_q.contains_key(id) {
            c.acks_durable_unannounced += 1;
        }
        if !ledger.popped.contains(id) && !in_q.contains_key(id) {
            c.lost += 1;
            note(&mut c, format!("acked {}:{} (never popped) is missing from q", id.0, id.1));
        }
    }
    for id in &ledger.popacked {
        if in_q.contains_key(id) {
            c.came_back += 1;
            note(&mut c, format!("{}:{} was popped and acked but is back in q", id.0, id.1));
        }
    }
    c
}

#[test]
fn acknowledged_writes_survive_kill_9_exactly_once_and_in_order() {
    let iterations: usize = std::env::var("POLYMQ_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("POLYMQ_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash: seed {seed} (set POLYMQ_CRASH_SEED to replay the kill timings)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let started = Instant::now();
    let mut ledger = Ledger::default();
    let mut torn_tails = 0;
    let mut last = Check::default();
    for i in 0..iterations {
        // Alternate: append-only runs grow q; mixed runs also drain it, so
        // acks race with appends and with the kill.
        let mode = if i % 2 == 0 { "append" } else { "mixed" };
        let delay = Duration::from_millis(rng.gen_range(20..=300));
        let run = run_and_kill(&data, mode, &format!("r{i}"), delay);
        // What a run printed for its own tasks must be a gapless prefix per
        // task: appends are awaited one by one.
        let mut next: BTreeMap<&str, u64> = BTreeMap::new();
        for (t, n) in &run.acked {
            let e = next.entry(t.as_str()).or_insert(0);
            assert_eq!(*n, *e, "run {i}: task {t} acknowledged {n} out of turn");
            *e += 1;
        }
        // An ack is only sent after its POP line is printed.
        let popped: BTreeSet<&Id> = run.popped.iter().collect();
        assert!(run.popacked.iter().all(|id| popped.contains(id)), "run {i}: POPACK without POP");
        ledger.acked.extend(run.acked);
        ledger.popped.extend(run.popped);
        ledger.popacked.extend(run.popacked);
        let c = check(&data, &ledger);
        if c.truncated_bytes > 0 {
            torn_tails += 1;
        }
        assert!(
            c.problems.is_empty(),
            "after kill {} ({mode}, {} ms after READY, seed {seed}): lost {}, duplicated {}, came back {}:\n{}",
            i + 1,
            delay.as_millis(),
            c.lost,
            c.duplicated,
            c.came_back,
            c.problems.join("\n")
        );
        last = c;
    }
    // Once more after the loop: the in-process opens and clean closes above
    // must not have changed what is there either.
    let c = check(&data, &ledger);
    assert!(c.problems.is_empty(), "final check (seed {seed}): {}", c.problems.join("\n"));
    assert_eq!((c.in_stream, c.in_queue), (last.in_stream, last.in_queue), "a clean reopen changed the contents");
    let popacked_total = ledger.popacked.len();
    // Straight to stderr, not eprintln!, which the test harness captures:
    // the totals belong in every CI log, passing or not.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "crash: {iterations} kills, {} acked appends, {} present, {popacked_total} acked pops, {} lost, {} duplicated, {} popped-and-acked came back; {} acks durable before announced; {torn_tails} restarts cut a torn tail; s holds {} messages, q holds {} ({:.1} s)",
        ledger.acked.len(),
        c.acked_present,
        c.lost,
        c.duplicated,
        c.came_back,
        c.acks_durable_unannounced,
        c.in_stream,
        c.in_queue,
        started.elapsed().as_secs_f64()
    );
    assert!(ledger.acked.len() >= iterations, "the kids acknowledged almost nothing ({}): the test proved little", ledger.acked.len());
    assert!(popacked_total > 0 || iterations < 2, "no mixed run acknowledged a pop: the pop/ack half proved nothing");
}

/// Opens a churn-mode store with a clock far ahead (so parked messages are
/// visible) and counts every message in `c` by id, without acking anything.
fn churn_contents(dir: &Path) -> (HashMap<Id, usize>, Vec<String>) {
    let mut c = cfg(dir);
    c.segment_bytes = 64 * 1024;
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64 + 10 * 3_600_000;
    let store =
        Store::open_with_clock(c, Arc::new(ManualClock::new(later))).unwrap_or_else(|e| panic!("the store must open after kill -9: {e}"));
    let q = store.queue_id("c").expect("queue c was declared before READY");
    let mut found: HashMap<Id, usize> = HashMap::new();
    let mut problems = Vec::new();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        loop {
            let batch = store.pop(q, 1024, Duration::from_secs(3600), Duration::ZERO).await.expect("pop c");
            if batch.is_empty() {
                break;
            }
            for d in batch {
                match parse_payload(&d.message.payload) {
                    Some(id) => *found.entry(id).or_default() += 1,
                    None => problems.push(format!("c offset {} holds a malformed or altered message", d.offset)),
                }
            }
        }
    });
    store.close().expect("close");
    (found, problems)
}

#[test]
fn compaction_and_reclaim_under_kill_9_lose_nothing() {
    let iterations: usize = std::env::var("POLYMQ_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 = std::env::var("POLYMQ_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let started = Instant::now();
    let mut ledger = Ledger::default();
    let mut found = HashMap::new();
    for i in 0..iterations {
        let delay = Duration::from_millis(rng.gen_range(50..=300));
        let run = run_and_kill(&data, "churn", &format!("c{i}"), delay);
        ledger.acked.extend(run.acked);
        ledger.popped.extend(run.popped);
        ledger.popacked.extend(run.popacked);
        let (f, mut problems) = churn_contents(&data);
        for (id, &n) in &f {
            if n > 1 {
                problems.push(format!("{}:{} is in c {n} times", id.0, id.1));
            }
            if ledger.popacked.contains(id) {
                problems.push(format!("{}:{} was popped and acked but is back", id.0, id.1));
            }
        }
        for id in &ledger.acked {
            if !ledger.popped.contains(id) && !f.contains_key(id) {
                problems.push(format!("acked {}:{} (never popped) is missing", id.0, id.1));
            }
        }
        problems.truncate(20);
        assert!(problems.is_empty(), "after churn kill {} ({} ms, seed {seed}):\n{}", i + 1, delay.as_millis(), problems.join("\n"));
        found = f;
    }
    let first_segment = data.join("log").join("00000000000000000000.log");
    let segments = std::fs::read_dir(data.join("log"))
        .expect("log dir")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log")))
        .count();
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "crash (churn): {iterations} kills, {} acked appends, {} acked pops, {} messages left (parked or unacked), 0 lost, 0 duplicated; {segments} segments on disk, first segment reclaimed: {} ({:.1} s)",
        ledger.acked.len(),
        ledger.popacked.len(),
        found.values().sum::<usize>(),
        !first_segment.exists(),
        started.elapsed().as_secs_f64()
    );
    assert!(ledger.popacked.len() > 100, "the poppers acked almost nothing: the churn proved little");
    assert!(!first_segment.exists(), "parked messages pinned the first segment: compaction never freed it");
}
