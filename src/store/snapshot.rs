//! The metadata snapshot: every queue (name, options, next offset) and every
//! group offset, as of a log position `covers`. Written before segments are
//! reclaimed, so declarations and offsets in those segments are not lost.
//! Format: header `[magic 8][version 1][pad 7][covers u64][count u64]`, then
//! one framed (length + CRC) entry per queue or group offset. Written to a
//! temporary file, fsynced, renamed over the old one, directory fsynced.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes};

use super::State;
use crate::log::frame::{frame_prefix, read_frame, FrameRead};
use crate::queue::{QueueId, QueueOptions, QueueTable};
use crate::record::Reader;
use crate::route::Pattern;
use crate::StoreError;

const FILE: &str = "meta.snapshot";
const MAGIC: &[u8; 8] = b"PMQSNAP\n";
const VERSION: u8 = 1;
const QUEUE: u8 = 1;
const GROUP: u8 = 2;
const BIND: u8 = 3;

pub struct Loaded {
    pub covers: u64,
}

/// Writes the snapshot, taking the state lock one chunk of queues at a time
/// so a store with millions of queues does not stall appends while it runs.
/// Every change after `covers` is also in the log past `covers`, and
/// replaying it over a snapshot that already reflects it is harmless.
pub fn write(dir: &Path, state: &Mutex<State>, covers: u64) -> Result<(), StoreError> {
    let lock = || state.lock().map_err(|_| StoreError::Poisoned);
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&[0u8; 7]);
    out.put_u64_le(covers);
    let count_at = out.len();
    out.put_u64_le(0);
    let mut count = 0u64;
    let mut body = Vec::with_capacity(512);
    let chunks = lock()?.table.chunk_count();
    for c in 0..chunks {
        let st = lock()?;
        st.table.for_each_durable_in_chunk(c, |id, name, opts, next| {
            body.clear();
            body.put_u8(QUEUE);
            body.put_u64_le(id.0);
            body.put_u64_le(next);
            body.put_u16_le(name.len() as u16);
            body.put_slice(name.as_bytes());
            opts.encode(&mut body);
            out.extend_from_slice(&frame_prefix(&[&body]));
            out.extend_from_slice(&body);
            count += 1;
        });
    }
    let st = lock()?;
    for ((group, id), offset) in st.group_offsets.iter().filter(|((_, id), _)| !id.is_transient()) {
        body.clear();
        body.put_u8(GROUP);
        body.put_u64_le(id.0);
        body.put_u64_le(*offset);
        body.put_u16_le(group.len() as u16);
        body.put_slice(group.as_bytes());
        out.extend_from_slice(&frame_prefix(&[&body]));
        out.extend_from_slice(&body);
        count += 1;
    }
    for (space, trie) in &st.spaces {
        trie.for_each(&mut |p, id| {
            if id.is_transient() {
                return;
            }
            body.clear();
            body.put_u8(BIND);
            body.put_u64_le(id.0);
            body.put_u16_le(space.len() as u16);
            body.put_slice(space.as_bytes());
            let c = p.to_canonical();
            body.put_u16_le(c.len() as u16);
            body.put_slice(c.as_bytes());
            out.extend_from_slice(&frame_prefix(&[&body]));
            out.extend_from_slice(&body);
            count += 1;
        });
    }
    drop(st);
    out[count_at..count_at + 8].copy_from_slice(&count.to_le_bytes());
    let tmp = dir.join("meta.snapshot.tmp");
    let path = dir.join(FILE);
    let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(&out).map_err(|e| StoreError::io(&tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
    crate::log::segment::sync_dir(dir)
}

/// Loads the snapshot if there is one. A damaged snapshot is an error: the
/// segments it replaced are gone, so starting without it would lose queues.
pub fn load(
    dir: &Path,
    table: &mut QueueTable,
    groups: &mut HashMap<(Arc<str>, QueueId), u64>,
    bindings: &mut Vec<(String, Pattern, QueueId)>,
    now: u64,
) -> Result<Option<Loaded>, StoreError> {
    let path = dir.join(FILE);
    let buf = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path, e)),
    };
    let corrupt =
        |offset: usize, reason: &str| StoreError::Corrupt { path: path.clone(), offset: offset as u64, reason: reason.to_owned() };
    if buf.len() < 32 || &buf[..8] != MAGIC {
        return Err(corrupt(0, "not a polymq metadata snapshot"));
    }
    if buf[8] != VERSION {
        return Err(StoreError::UnsupportedVersion { path, version: buf[8] });
    }
    let mut r = Reader::new(Bytes::copy_from_slice(&buf[16..32]));
    let covers = r.u64()?;
    let count = r.u64()?;
    let mut off = 32usize;
    for _ in 0..count {
        let FrameRead::Record { body, total } = read_frame(&buf[off..]) else {
            return Err(corrupt(off, "damaged snapshot entry"));
        };
        let mut r = Reader::new(Bytes::copy_from_slice(body));
        match r.u8()? {
            QUEUE => {
                let id = QueueId(r.u64()?);
                let next = r.u64()?;
                let n = r.u16()? as usize;
                let name = r.string(n)?;
                let opts = QueueOptions::decode(&mut r)?;
                table.restore_queue(id, &name, &opts, next, now);
            }
            GROUP => {
                let id = QueueId(r.u64()?);
                let offset = r.u64()?;
                let n = r.u16()? as usize;
                let group = r.string(n)?;
                groups.insert((group.into(), id), offset);
            }
            BIND => {
                let id = QueueId(r.u64()?);
                let n = r.u16()? as usize;
                let space = r.string(n)?;
                let n = r.u16()? as usize;
                let p = r.string(n)?;
                bindings.push((space, Pattern::from_canonical(&p), id));
            }
            _ => return Err(corrupt(off, "unknown snapshot entry")),
        }
        off += total;
    }
    Ok(Some(Loaded { covers }))
}
