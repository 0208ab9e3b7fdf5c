//! The Redis store, shared by every replica. Keys, under a configurable prefix `p`:
//! - `p e:<uid>`: `{"rev": N, "entity": <Cedar entity JSON>}`, uid in Cedar's form (`User::"alice"`);
//! - `p t:<type>`: a sorted set of the type's uids (all score 0), for listing in uid order;
//! - `p c:<uid>`: the set of uids whose parents include `<uid>`, and `p pa:<uid>` the uids of its
//!   parents (the children index, for listings that need only what is under an entity); `p indexed`
//!   counts the audit entries written by writers that keep the index, and `p children` is set when a
//!   replica finished indexing a store from before it: the index is complete exactly while the audit
//!   stream's `entries-added` equals `children + indexed` (a writer of an earlier version adds audit
//!   entries without index entries, and so shows);
//! - `p rev`: the revision counter; `p audit`: the audit stream;
//! - channel `p invalidate:<db>`: one message per write, `<rev>\n<uid>\n<uid>…` (channels are
//!   global to a Redis server, so the database number keeps deployments on other databases apart).
//!
//! A write is one Lua script: the revision, the entities, their audit entries and the invalidation
//! message commit together or not at all. On a Cluster the prefix carries a hash tag, so every key
//! is in one slot and the script (routed by its one declared key, `p rev`) runs on that slot's node.
//! With `--redis-min-replicas N` the script is followed, in the same pipeline, by `WAIT N`: a write
//! is acknowledged only once N replicas have it.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cedar_policy::EntityUid;
use redis::AsyncCommands;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::cache::{EntityCache, Source};
use super::topology::{Conn, Endpoint, Link, Topology};
use super::{
    AuditFilter, AuditRecord, Change, ExportChunk, Fetched, Guard, Record, RequestKey, key_of, parse_stored, rfc3339,
    stored_entity,
};
use crate::error::StoreError;

/// Applies one batch. ARGV: prefix, channel, actor, floor, request id ("" for none), request digest,
/// the number of guards, then (uid, revision) per guard — the batch applies only if each of those
/// entities is at that revision now (0: absent) — then (op, uid, type, entity JSON or "", parent
/// uids joined by newlines) per change. Each change
/// also keeps the children index (`c:<parent>` → child uids, `pa:<uid>` → its parents' uids). A request id used before returns its first
/// revision (same digest; only its key's expiry is renewed, a write that a following WAIT covers) or
/// an error (another batch), writing nothing; a new one is kept a day. The new revision is above both the stored one and the writer's floor (the highest it
/// has seen): after Redis lost writes, revisions go on instead of being issued a second time.
/// Validation happened before, and every key's type is checked before the first write: nothing here
/// fails half-way except Redis itself running out of memory, which it checks before a script starts.
const APPLY: &str = r#"
local p, channel, actor, floor = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local rid, digest = ARGV[5], ARGV[6]
local request = p .. 'request:' .. rid
local at = 8 + 2 * tonumber(ARGV[7])
local function expect(key, want)
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= want then
    return redis.error_reply('cedar-pdp: key ' .. key .. ' holds a ' .. t .. ', not a ' .. want)
  end
end
local bad = expect(p .. 'rev', 'string') or expect(p .. 'audit', 'stream') or expect(p .. 'indexed', 'string')
if rid ~= '' then bad = bad or expect(request, 'string') end
for i = at, #ARGV, 5 do
  bad = bad or expect(p .. 'e:' .. ARGV[i + 1], 'string') or expect(p .. 't:' .. ARGV[i + 2], 'zset')
    or expect(p .. 'pa:' .. ARGV[i + 1], 'set')
  for parent in string.gmatch(ARGV[i + 4], '[^\n]+') do
    bad = bad or expect(p .. 'c:' .. parent, 'set')
  end
end
if bad then return bad end
if rid ~= '' then
  local seen = redis.call('GET', request)
  if seen then
    local first, seen_digest = string.match(seen, '^(%d+) (%x+)$')
    if seen_digest ~= digest then
      return redis.error_reply('cedar-pdp: request_id reused for a different batch')
    end
    -- A write of this connection after the first one's, so that a WAIT covers that one too.
    redis.call('EXPIRE', request, 86400)
    return tonumber(first)
  end
end
for i = 8, at - 1, 2 do
  local current = redis.call('GET', p .. 'e:' .. ARGV[i])
  local rev = current and string.match(current, '^{"rev":(%d+),') or '0'
  if rev ~= ARGV[i + 1] then
    return redis.error_reply('cedar-pdp: conflict on ' .. ARGV[i])
  end
end
local stored = tonumber(redis.call('GET', p .. 'rev') or '0')
if not stored then
  return redis.error_reply('cedar-pdp: key ' .. p .. 'rev is not a number')
end
-- Revisions follow the clock too (µs), so a replica that never saw revisions Redis later lost
-- does not issue them again either.
local now = redis.call('TIME')
local clock = tonumber(now[1]) * 1000000 + tonumber(now[2])
local rev = string.format('%d', math.max(stored, floor, clock) + 1)
redis.call('SET', p .. 'rev', rev)
local uids = {}
for i = at, #ARGV, 5 do
  local op, uid, ty, entity, parents = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  -- The children index: the entity's old parent edges go, its new ones come.
  local pa = p .. 'pa:' .. uid
  for _, old in ipairs(redis.call('SMEMBERS', pa)) do
    redis.call('SREM', p .. 'c:' .. old, uid)
  end
  redis.call('DEL', pa)
  if op == 'upsert' then
    for parent in string.gmatch(parents, '[^\n]+') do
      redis.call('SADD', p .. 'c:' .. parent, uid)
      redis.call('SADD', pa, parent)
    end
  end
  local key = p .. 'e:' .. uid
  local before = redis.call('GET', key) or ''
  local after = ''
  if op == 'upsert' then
    after = '{"rev":' .. rev .. ',"entity":' .. entity .. '}'
    redis.call('SET', key, after)
    redis.call('ZADD', p .. 't:' .. ty, 0, uid)
  else
    redis.call('DEL', key)
    redis.call('ZREM', p .. 't:' .. ty, uid)
  end
  redis.call('XADD', p .. 'audit', '*', 'rev', rev, 'actor', actor, 'op', op, 'uid', uid,
    'before', before, 'after', after)
  uids[#uids + 1] = uid
end
redis.call('INCRBY', p .. 'indexed', #uids)
if rid ~= '' then redis.call('SET', request, rev .. ' ' .. digest, 'EX', 86400) end
redis.call('PUBLISH', channel, rev .. '\n' .. table.concat(uids, '\n'))
return tonumber(rev)
"#;

/// The `entries-added` of an `XINFO STREAM` reply (Redis 7 and later; an earlier Redis gives
/// `None`, and listings then scan by type).
fn entries_added(info: &redis::Value) -> Option<u64> {
    let pairs: Vec<(String, redis::Value)> = match info {
        redis::Value::Map(map) => map
            .iter()
            .filter_map(|(k, v)| redis::from_redis_value_ref::<String>(k).ok().map(|k| (k, v.clone())))
            .collect(),
        redis::Value::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => redis::from_redis_value_ref::<String>(k).ok().map(|k| (k, v.clone())),
                _ => None,
            })
            .collect(),
        _ => return None,
    };
    pairs.into_iter().find(|(k, _)| k == "entries-added").and_then(|(_, v)| redis::from_redis_value::<u64>(v).ok())
}

/// How often the subscription is pinged: a silently cut connection is noticed within this plus the
/// Redis timeout.
const PING_EVERY: Duration = Duration::from_secs(1);

/// The endpoint `url` names: over TLS for `rediss://`, trusting `tls.ca` (else the system's roots)
/// and presenting `tls.cert` when given.
fn endpoint(url: &str, tls: &super::RedisTls) -> Result<Endpoint, StoreError> {
    let config = |message: String| StoreError::Config(message);
    let secure = url.starts_with("rediss://");
    if !secure {
        if *tls != super::RedisTls::default() {
            return Err(config("--redis-tls-* options need a TLS URL: rediss://host:port/db".into()));
        }
        return Ok(Endpoint { url: url.to_string(), secure, certs: None });
    }
    let read = |path: &std::path::Path, flag: &str| {
        std::fs::read(path).map_err(|e| config(format!("{flag} {}: {e}", path.display())))
    };
    let client_tls = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read(cert, "--redis-tls-cert")?,
            client_key: read(key, "--redis-tls-key")?,
        }),
        (None, None) => None,
        _ => return Err(config("--redis-tls-cert and --redis-tls-key go together".into())),
    };
    let root_cert = tls.ca.as_deref().map(|ca| read(ca, "--redis-tls-ca")).transpose()?;
    Ok(Endpoint { url: url.to_string(), secure, certs: Some(redis::TlsCertificates { client_tls, root_cert }) })
}

/// The key prefix as used: on a Cluster it must hold a hash tag (`{…}`), and gets one around it
/// when it has none, so that every key of the deployment is in one slot.
pub fn effective_prefix(prefix: &str, topology: &Topology) -> String {
    let tagged = prefix.find('{').is_some_and(|open| prefix[open + 1..].find('}').is_some_and(|len| len > 0));
    match topology {
        Topology::Cluster { .. } if !tagged => format!("{{{prefix}}}"),
        _ => prefix.to_string(),
    }
}

/// How a RedisStore connects.
pub struct RedisOptions<'a> {
    pub url: &'a str,
    pub prefix: &'a str,
    pub tls: &'a super::RedisTls,
    pub topology: &'a Topology,
    /// Replicas that must have a write before it is acknowledged (0: the primary's answer is enough).
    pub min_replicas: u32,
    pub timeout: Duration,
}

pub struct RedisStore {
    link: Link,
    conn: Conn,
    prefix: String,
    channel: String,
    timeout: Duration,
    min_replicas: u32,
    apply: redis::Script,
}

impl RedisStore {
    /// Connects lazily: the server starts while Redis is down, and reconnects by itself.
    pub fn connect(options: &RedisOptions) -> Result<Self, StoreError> {
        let endpoint = endpoint(options.url, options.tls)?;
        let prefix = effective_prefix(options.prefix, options.topology);
        let link = Link::open(&endpoint, options.topology, &format!("{prefix}rev"), options.timeout)?;
        let channel = format!("{prefix}invalidate:{}", link.db);
        Ok(RedisStore {
            conn: link.conn.clone(),
            link,
            prefix,
            channel,
            timeout: options.timeout,
            min_replicas: options.min_replicas,
            apply: redis::Script::new(APPLY),
        })
    }

    fn entity_key(&self, uid: &str) -> String {
        format!("{}e:{uid}", self.prefix)
    }

    /// Bounds every call: a Redis that does not answer is an unavailable store, not a slow decision.
    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(|e| StoreError::Unavailable(e.to_string())),
            Err(_) => {
                // A primary that hangs is left like one that died (Sentinel: asked for again).
                self.conn.on_timeout();
                Err(StoreError::Unavailable(format!("no answer from Redis within {:?}", self.timeout)))
            }
        }
    }

    pub async fn apply(
        &self,
        changes: &[Change],
        guards: &[Guard],
        actor: &str,
        floor: u64,
        request: Option<&RequestKey>,
    ) -> Result<u64, StoreError> {
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(self.apply.get_hash()).arg(1).arg(format!("{}rev", self.prefix));
        eval.arg(&self.prefix).arg(&self.channel).arg(actor).arg(floor);
        match request {
            Some(key) => eval.arg(&key.id).arg(&key.digest),
            None => eval.arg("").arg(""),
        };
        eval.arg(guards.len());
        for guard in guards {
            eval.arg(key_of(&guard.uid)).arg(guard.revision);
        }
        for change in changes {
            let uid = change.uid();
            let (entity, parents) = match change {
                Change::Upsert { json, .. } => (json.to_string(), super::parent_keys(json).join("\n")),
                Change::Delete { .. } => (String::new(), String::new()),
            };
            eval.arg(change.operation()).arg(key_of(uid)).arg(uid.type_name().to_string()).arg(entity).arg(parents);
        }
        let (revision, replicated) = self.run_apply(&eval, request).await?;
        match replicated {
            Some(n) if n < self.min_replicas => Err(StoreError::Unavailable(format!(
                "not replicated; retry: written at revision {revision} on the primary, but {n} of the \
                 {} replicas --redis-min-replicas asks for had it within {:?} (a failover now may undo it; \
                 retry with the same request_id)",
                self.min_replicas, self.timeout
            ))),
            _ => Ok(revision),
        }
    }

    /// The write script and, with min replicas, `WAIT` in the same pipeline: the revision and how
    /// many replicas have the write. A primary without the script (new, restarted, promoted) gets it
    /// loaded, and the pipeline is sent again: the first ran nothing.
    async fn run_apply(
        &self,
        eval: &redis::Cmd,
        request: Option<&RequestKey>,
    ) -> Result<(u64, Option<u32>), StoreError> {
        let mut pipe = redis::pipe();
        pipe.add_command(eval.clone());
        if self.min_replicas > 0 {
            // WAIT 0 would wait forever: at least a millisecond.
            pipe.cmd("WAIT").arg(self.min_replicas).arg(self.timeout.as_millis().max(1) as u64);
        }
        // Each reply is judged by its place: a failed WAIT must not pass for a refused write.
        pipe.ignore_errors();
        let mut replies = self.send_apply(&pipe, request).await?;
        if matches!(replies.first(), Some(redis::Value::ServerError(e)) if e.code() == "NOSCRIPT") {
            let mut conn = self.conn.clone();
            self.bounded(self.apply.load_async(&mut conn)).await?;
            replies = self.send_apply(&pipe, request).await?;
        }
        let parse = |e: redis::ParsingError| StoreError::WriteUnknown(format!("unreadable answer from Redis: {e}"));
        let mut replies = replies.into_iter();
        let revision: u64 = match replies.next() {
            Some(redis::Value::ServerError(e)) => return Err(apply_error(e.into(), request)),
            Some(reply) => redis::from_redis_value(reply).map_err(parse)?,
            None => return Err(StoreError::WriteUnknown("Redis answered nothing".into())),
        };
        let replicated = match replies.next() {
            None => None,
            Some(redis::Value::ServerError(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "not replicated; retry: written at revision {revision} on the primary, but Redis refused to \
                     confirm its replication (WAIT: {e}); retry with the same request_id"
                )));
            }
            Some(reply) => Some(redis::from_redis_value(reply).map_err(parse)?),
        };
        Ok((revision, replicated))
    }

    /// Sends the write pipeline, bounded by the timeout (twice it with a WAIT).
    async fn send_apply(
        &self,
        pipe: &redis::Pipeline,
        request: Option<&RequestKey>,
    ) -> Result<Vec<redis::Value>, StoreError> {
        let bound = self.timeout * if self.min_replicas > 0 { 2 } else { 1 };
        let mut conn = self.conn.clone();
        match tokio::time::timeout(bound, pipe.query_async(&mut conn)).await {
            Ok(Ok(replies)) => Ok(replies),
            Ok(Err(e)) => Err(apply_error(e, request)),
            Err(_) => {
                self.conn.on_timeout();
                Err(StoreError::WriteUnknown(format!("no answer from Redis within {bound:?}")))
            }
        }
    }

    /// One round trip: the records of `uids` and the store's revision they were read at.
    pub async fn read(&self, uids: &[EntityUid], min_revision: u64) -> Result<Fetched, StoreError> {
        let keys: Vec<String> = uids.iter().map(|u| self.entity_key(&key_of(u))).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(format!("{}rev", self.prefix));
        if !keys.is_empty() {
            pipe.cmd("MGET").arg(&keys);
        }
        let mut conn = self.conn.clone();
        let (revision, values): (Option<u64>, Vec<Option<String>>) = if keys.is_empty() {
            let (revision,): (Option<u64>,) = self.bounded(pipe.query_async(&mut conn)).await?;
            (revision, Vec::new())
        } else {
            self.bounded(pipe.query_async(&mut conn)).await?
        };
        let current = revision.unwrap_or(0);
        if min_revision > current {
            return Err(StoreError::AheadOfStore { requested: min_revision, current });
        }
        let records = values
            .into_iter()
            .map(|v| v.map(|text| parse_stored(text.as_bytes()).map(Arc::new)).transpose())
            .collect::<Result<_, _>>()?;
        Ok((records, current))
    }

    /// Up to `limit` entities of type `ty` after `after`, and the uid to go on after (`None`: the
    /// index has no more). An entity deleted between the index read and the entity read is not
    /// returned, but the next key still comes from the index: a deletion never ends a scan early.
    pub async fn list(
        &self,
        ty: &str,
        after: &str,
        limit: usize,
    ) -> Result<(Vec<Arc<Record>>, Option<String>), StoreError> {
        let start = if after.is_empty() { "-".to_string() } else { format!("({after}") };
        let mut conn = self.conn.clone();
        let index = format!("{}t:{ty}", self.prefix);
        let uids: Vec<String> = self.bounded(conn.zrangebylex_limit(&index, start, "+", 0, limit as isize)).await?;
        if uids.is_empty() {
            return Ok((Vec::new(), None));
        }
        let next = if uids.len() == limit { uids.last().cloned() } else { None };
        let keys: Vec<String> = uids.iter().map(|u| self.entity_key(u)).collect();
        let values: Vec<Option<String>> = self.bounded(conn.mget(&keys)).await?;
        // An entity deleted between the two calls is simply not listed.
        let records = values
            .into_iter()
            .flatten()
            .map(|text| parse_stored(text.as_bytes()).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok((records, next))
    }

    /// Every entity (of `ty`, if given), a chunk at a time. Redis has no snapshot reads, so each
    /// chunk is read with the revision, and a write during the export ends it with
    /// [`StoreError::Changed`] rather than mix two states.
    pub async fn export(
        &self,
        ty: Option<&str>,
        chunk: usize,
        out: &tokio::sync::mpsc::Sender<Result<ExportChunk, StoreError>>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let rev_key = format!("{}rev", self.prefix);
        let start: Option<u64> = self.bounded(conn.get(&rev_key)).await?;
        let start = start.unwrap_or(0);
        let types = match ty {
            Some(ty) => vec![ty.to_string()],
            None => self.types().await?,
        };
        for ty in types {
            let index = format!("{}t:{ty}", self.prefix);
            let mut after = "-".to_string();
            loop {
                let uids: Vec<String> =
                    self.bounded(conn.zrangebylex_limit(&index, &after, "+", 0, chunk as isize)).await?;
                let Some(last) = uids.last() else { break };
                after = format!("({last}");
                let keys: Vec<String> = uids.iter().map(|u| self.entity_key(u)).collect();
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(&rev_key).cmd("MGET").arg(&keys);
                let (revision, values): (Option<u64>, Vec<Option<String>>) =
                    self.bounded(pipe.query_async(&mut conn)).await?;
                let revision = revision.unwrap_or(0);
                if revision != start {
                    return Err(StoreError::Changed(format!(
                        "entities were written during the export (revision {start} → {revision}); export again"
                    )));
                }
                let records = values
                    .into_iter()
                    .flatten()
                    .map(|text| parse_stored(text.as_bytes()).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()?;
                if out.send(Ok(ExportChunk { records, revision })).await.is_err() {
                    return Ok(());
                }
                if uids.len() < chunk {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Whether the children index holds every edge: indexed, and every audit entry since written by
    /// a writer that keeps it (one atomic read of the counters; see the module doc).
    pub async fn children_complete(&self) -> Result<bool, StoreError> {
        let (base, indexed, added) = self.index_counters().await?;
        Ok(base.is_some_and(|base| added == base + indexed))
    }

    /// One atomic read of the children index's counters: its base (`None` until built), the audit
    /// entries indexing writers added, and every audit entry ever added (0 without a stream).
    async fn index_counters(&self) -> Result<(Option<u64>, u64, u64), StoreError> {
        let mut conn = self.conn.clone();
        let (base, indexed, info): (Option<u64>, Option<u64>, redis::Value) = self
            .bounded(
                redis::pipe()
                    .atomic()
                    .get(format!("{}children", self.prefix))
                    .get(format!("{}indexed", self.prefix))
                    .cmd("XINFO")
                    .arg("STREAM")
                    .arg(format!("{}audit", self.prefix))
                    .query_async(&mut conn),
            )
            .await
            .or_else(|e| match e {
                // No audit stream yet: nothing was ever written.
                StoreError::Unavailable(m) if m.contains("no such key") => Ok((None, None, redis::Value::Nil)),
                other => Err(other),
            })?;
        Ok((base, indexed.unwrap_or(0), entries_added(&info).unwrap_or(0)))
    }

    /// The uids of the entities whose parents include one of `parents`, or `None` past `limit`.
    /// Trust them only while `children_complete`.
    pub async fn children(&self, parents: &[String], limit: usize) -> Result<Option<Vec<String>>, StoreError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for parent in parents {
            pipe.smembers(format!("{}c:{parent}", self.prefix));
        }
        let sets: Vec<Vec<String>> = self.bounded(pipe.query_async(&mut conn)).await?;
        let children: Vec<String> = sets.into_iter().flatten().collect();
        Ok((children.len() <= limit).then_some(children))
    }

    /// Builds the children index from every stored entity, then records the counters that make it
    /// complete. Writes meanwhile keep their own edges (and count themselves); a write by an earlier
    /// version meanwhile or later leaves the counters apart, so the index is not trusted until built
    /// again. This only adds: the index may hold an outdated edge (a candidate more, decided like the
    /// rest) but never lacks one while trusted.
    pub async fn index_children(&self) -> Result<(), StoreError> {
        let (base, indexed, added) = self.index_counters().await?;
        if base.is_some_and(|base| added == base + indexed) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        // Entries written from now on by indexing writers count themselves; earlier ones are scanned.
        let base = added.saturating_sub(indexed);
        for ty in self.types().await? {
            let mut after = Some(String::new());
            while let Some(from) = after {
                let (records, next) = self.list(&ty, &from, 500).await?;
                after = next;
                let mut pipe = redis::pipe();
                for record in &records {
                    let uid = key_of(&record.uid()?);
                    for parent in record.parents.iter().map(key_of) {
                        pipe.sadd(format!("{}c:{parent}", self.prefix), &uid).ignore();
                        pipe.sadd(format!("{}pa:{uid}", self.prefix), parent).ignore();
                    }
                }
                self.bounded(pipe.query_async::<()>(&mut conn)).await?;
            }
        }
        self.bounded(conn.set::<_, _, ()>(format!("{}children", self.prefix), base)).await
    }

    /// The entity types that have an index key, in name order.
    async fn types(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}t:*", self.prefix);
        let mut cursor = 0u64;
        let mut types = Vec::new();
        loop {
            let scan = redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).clone();
            let (next, keys): (u64, Vec<String>) = self.bounded(conn.on_store_node(&scan)).await?;
            types.extend(
                keys.into_iter().filter_map(|k| k.strip_prefix(&format!("{}t:", self.prefix)).map(str::to_string)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        types.sort();
        types.dedup();
        Ok(types)
    }

    /// Removes audit entries older than `before` (stream ids are their times).
    pub async fn trim_audit(&self, before: std::time::SystemTime) -> Result<u64, StoreError> {
        let ms = before.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let mut conn = self.conn.clone();
        let key = format!("{}audit", self.prefix);
        self.bounded(redis::cmd("XTRIM").arg(&key).arg("MINID").arg(format!("{ms}-0")).query_async(&mut conn)).await
    }

    pub async fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let ms = |t: std::time::SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let mut start = match filter.after {
            Some((ms, seq)) => format!("({ms}-{seq}"),
            None => filter.since.map_or_else(|| "-".to_string(), |t| format!("{}-0", ms(t))),
        };
        // `until` is exclusive: the last id of the millisecond before it.
        let end = filter.until.map_or_else(|| "+".to_string(), |t| format!("{}-{}", ms(t).saturating_sub(1), u64::MAX));
        let key = format!("{}audit", self.prefix);
        let mut out = Vec::new();
        let mut conn = self.conn.clone();
        const CHUNK: usize = 500;
        while out.len() < filter.limit {
            let reply: redis::streams::StreamRangeReply =
                self.bounded(conn.xrange_count(&key, &start, &end, CHUNK)).await?;
            let n = reply.ids.len();
            for entry in &reply.ids {
                let record = audit_record(entry)?;
                if filter.matches_uid(&record.uid) && out.len() < filter.limit {
                    out.push(record);
                }
            }
            match reply.ids.last() {
                Some(last) if n == CHUNK => start = format!("({}", last.id),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Keeps this replica's cache coherent: applies every invalidation message, and when the
    /// subscription is lost, marks the cache unconfirmed (served only within the staleness bound);
    /// when it is back, drops the cache, since messages may have been missed.
    pub fn spawn_subscriber(&self, cache: Arc<EntityCache>, stop: CancellationToken) -> Result<(), StoreError> {
        let link = self.link.clone();
        let channel = self.channel.clone();
        let rev_key = format!("{}rev", self.prefix);
        let mut conn = self.conn.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            // Should this task ever end other than by `stop`, the cache must not go on trusting itself.
            let _guard = LostOnDrop(cache.clone());
            let mut backoff = Duration::from_millis(50);
            loop {
                let session = async {
                    let mut pubsub = tokio::time::timeout(timeout, link.pubsub()).await??;
                    tokio::time::timeout(timeout, pubsub.subscribe(&channel)).await??;
                    // Read after subscribing: every later write arrives as a message.
                    let floor = cache.highest();
                    let revision: Option<u64> = tokio::time::timeout(timeout, conn.get(&rev_key)).await??;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>((pubsub, floor, revision.unwrap_or(0)))
                };
                let (pubsub, floor, revision) = tokio::select! {
                    () = stop.cancelled() => return,
                    session = session => match session {
                        Ok(ok) => ok,
                        Err(e) => {
                            tracing::warn!("entity invalidations: cannot subscribe: {e}");
                            conn.on_timeout();
                            tokio::select! {
                                () = stop.cancelled() => return,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                            continue;
                        }
                    },
                };
                cache.subscribed(floor, revision);
                tracing::info!(revision, "entity invalidations: subscribed; local cache cleared");
                cache.set_persistence_warning(persistence_risk(&mut conn, timeout).await);
                backoff = Duration::from_millis(50);
                let (mut sink, mut messages) = pubsub.split();
                let mut ping = tokio::time::interval(PING_EVERY);
                let mut confirmed = std::time::Instant::now();
                let reason = loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        message = messages.next() => match message {
                            Some(message) => match message.get_payload::<String>() {
                                Ok(payload) => {
                                    cache.apply_invalidation(&payload);
                                    confirmed = std::time::Instant::now();
                                }
                                Err(e) => {
                                    tracing::warn!("entity invalidations: unreadable message: {e}");
                                    cache.clear();
                                }
                            },
                            None => break "connection closed".to_string(),
                        },
                        _ = ping.tick() => {
                            if let Err(reason) = conn.check_primary().await {
                                break reason;
                            }
                            let sent = std::time::Instant::now();
                            match tokio::time::timeout(timeout, sink.ping::<redis::Value>()).await {
                                // Every message published before the ping has arrived by its answer.
                                Ok(Ok(_)) => confirmed = sent,
                                Ok(Err(e)) => break format!("ping failed: {e}"),
                                Err(_) => break format!("no ping answer within {timeout:?}"),
                            }
                        }
                    }
                };
                cache.lost(confirmed);
                tracing::warn!(
                    "entity invalidations: subscription lost ({reason}); cached entities are served only within the staleness bound"
                );
            }
        });
        Ok(())
    }
}

/// What a failed write script means: refused by the script or Redis (nothing written), or sent
/// without an answer (perhaps applied: only a retry with the same request_id can tell).
fn apply_error(e: redis::RedisError, request: Option<&RequestKey>) -> StoreError {
    // The script's own error reply, whole: Redis takes its first word for a code, and a pipeline
    // wraps it in a list of failed commands.
    let text = match e.clone().into_server_errors().as_deref() {
        Some([(_, first), ..]) => format!("{} {}", first.code(), first.details().unwrap_or_default()),
        _ => e.to_string(),
    };
    if let Some(uid) = text.split(": conflict on ").nth(1) {
        return StoreError::Conflict(uid.to_string());
    }
    if text.contains("request_id reused") {
        return StoreError::RequestReused(request.map(|k| k.id.clone()).unwrap_or_default());
    }
    match e.kind() {
        redis::ErrorKind::Server(_) | redis::ErrorKind::Extension => {
            StoreError::Unavailable(format!("Redis refused the write, so nothing was changed: {e}"))
        }
        _ => StoreError::WriteUnknown(format!("Redis: {e}")),
    }
}

impl Source for RedisStore {
    async fn fetch(&self, uids: &[EntityUid], min_revision: u64) -> Result<Fetched, StoreError> {
        self.read(uids, min_revision).await
    }
}

/// Whether Redis, as configured, can lose a write it acknowledged; read at every (re)connect. Managed
/// services may refuse CONFIG: that is said too.
async fn persistence_risk(conn: &mut Conn, timeout: Duration) -> Option<String> {
    let info: String =
        match tokio::time::timeout(timeout, conn.on_store_node(redis::cmd("INFO").arg("persistence"))).await {
            Ok(Ok(info)) => info,
            _ => return Some("Redis persistence settings could not be read".into()),
        };
    let aof = info.lines().any(|l| l.trim() == "aof_enabled:1");
    let fsync: Option<Vec<String>> =
        tokio::time::timeout(timeout, conn.on_store_node(redis::cmd("CONFIG").arg("GET").arg("appendfsync")))
            .await
            .ok()
            .and_then(Result::ok);
    let fsync = fsync.and_then(|pair| pair.get(1).cloned());
    let risk = match (aof, fsync.as_deref()) {
        (true, Some("always")) => return None,
        (false, _) => {
            "append-only persistence is off (appendonly no): a Redis restart loses every write since its last snapshot"
                .to_string()
        }
        (true, Some(other)) => format!(
            "appendfsync is `{other}`: a Redis crash can lose the writes of its last second, acknowledged or not"
        ),
        (true, None) => {
            "appendfsync could not be read (CONFIG GET refused): acknowledged writes may be lost in a Redis crash"
                .to_string()
        }
    };
    tracing::warn!("{risk}; for no lost acknowledged writes use `appendonly yes` and `appendfsync always`");
    Some(risk)
}

struct LostOnDrop(Arc<EntityCache>);

impl Drop for LostOnDrop {
    fn drop(&mut self) {
        self.0.lost(std::time::Instant::now());
    }
}

/// The entity JSON inside a stored value, for the audit trail; None where there was none.
fn audit_record(entry: &redis::streams::StreamId) -> Result<AuditRecord, StoreError> {
    let field = |name: &str| entry.get::<String>(name).unwrap_or_default();
    let ms: u64 = entry.id.split('-').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Ok(AuditRecord {
        revision: field("rev").parse().map_err(|_| StoreError::Corrupt(format!("audit entry {}: rev", entry.id)))?,
        at: rfc3339(UNIX_EPOCH + Duration::from_millis(ms)),
        actor: field("actor"),
        operation: field("op"),
        uid: field("uid"),
        before: stored_entity(field("before").as_bytes()),
        after: stored_entity(field("after").as_bytes()),
        cursor: entry.id.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_prefix_carries_one_hash_tag() {
        let cluster = Topology::Cluster { seeds: vec!["a:1".into()] };
        assert_eq!(effective_prefix("cedar-pdp:", &cluster), "{cedar-pdp:}");
        assert_eq!(effective_prefix("{team}:pdp:", &cluster), "{team}:pdp:");
        // An empty tag hashes the whole key: not a tag.
        assert_eq!(effective_prefix("{}pdp:", &cluster), "{{}pdp:}");
        assert_eq!(effective_prefix("cedar-pdp:", &Topology::Single), "cedar-pdp:");
    }
}
