// Embedded-store benchmark: redb vs SQLite (rusqlite, bundled) vs fjall 2.x.
// Usage: store-choice [redb|sqlite|fjall]...   |   store-choice lockprobe <file>
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ENT: TableDefinition<&str, &[u8]> = TableDefinition::new("entities");
const AUD: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("audit");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const N: usize = 100_000;
const BATCH: usize = 500;
type R<T> = Result<T, Box<dyn std::error::Error>>;

fn key(i: usize) -> String { format!("User::\"u{i:06}\"") }
fn entity(i: usize, rev: u64) -> serde_json::Value {
    serde_json::json!({"rev":rev,"entity":{"uid":{"type":"User","id":format!("u{i:06}")},
      "attrs":{"name":format!("User {i}"),"email":format!("u{i}@example.com"),"dept":"eng","title":"Senior Engineer","location":"Building 4 / Floor 2","suspended":false},
      "parents":[{"type":"Group","id":"g1"},{"type":"Group","id":"g2"},{"type":"Group","id":"g3"}]}})
}
fn audit(rev: u64, e: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"rev":rev,"op":"upsert","ts":"2025-01-01T00:00:00.000Z","actor":"admin@example.com","after":e})).unwrap()
}

/// One batch: (key, entity json, audit json)
type Batch = Vec<(String, Vec<u8>, Vec<u8>)>;
fn make_batch(ids: impl Iterator<Item = usize>, rev: u64) -> Batch {
    ids.map(|i| { let e = entity(i, rev); (key(i), serde_json::to_vec(&e).unwrap(), audit(rev, &e)) }).collect()
}

trait Store {
    fn write(&mut self, rev: u64, b: &Batch) -> R<()>;
    fn read_group(&self, keys: &[String]) -> R<usize>;
    fn scan(&self) -> R<(usize, usize)>;
}

struct Redb(redb::Database);
impl Store for Redb {
    fn write(&mut self, rev: u64, b: &Batch) -> R<()> {
        let mut tx = self.0.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)?;
        {
            let (mut e, mut a, mut m) = (tx.open_table(ENT)?, tx.open_table(AUD)?, tx.open_table(META)?);
            for (i, (k, v, av)) in b.iter().enumerate() { e.insert(k.as_str(), v.as_slice())?; a.insert((rev, i as u32), av.as_slice())?; }
            m.insert("revision", rev)?;
        }
        tx.commit()?; Ok(())
    }
    fn read_group(&self, keys: &[String]) -> R<usize> {
        let t = self.0.begin_read()?.open_table(ENT)?;
        let mut n = 0;
        for k in keys { n += t.get(k.as_str())?.map(|v| v.value().len()).unwrap_or(0); }
        Ok(n)
    }
    fn scan(&self) -> R<(usize, usize)> {
        let t = self.0.begin_read()?.open_table(ENT)?;
        let (mut c, mut b) = (0, 0);
        for r in t.iter()? { let (_k, v) = r?; c += 1; b += v.value().len(); }
        Ok((c, b))
    }
}

struct Sqlite(rusqlite::Connection);
fn sqlite_open(dir: &Path) -> R<Sqlite> {
    let c = rusqlite::Connection::open(dir.join("db.sqlite"))?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
      CREATE TABLE IF NOT EXISTS entities(k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS audit(rev INTEGER, idx INTEGER, v BLOB NOT NULL, PRIMARY KEY(rev, idx)) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v INTEGER) WITHOUT ROWID;")?;
    let q = |p: &str| c.query_row(p, [], |r| r.get::<_, String>(0).or_else(|_| r.get::<_, i64>(0).map(|v| v.to_string()))).unwrap();
    eprintln!("sqlite {} journal_mode={} synchronous={}", rusqlite::version(), q("PRAGMA journal_mode"), q("PRAGMA synchronous"));
    Ok(Sqlite(c))
}
impl Store for Sqlite {
    fn write(&mut self, rev: u64, b: &Batch) -> R<()> {
        let tx = self.0.transaction()?;
        {
            let mut e = tx.prepare_cached("INSERT INTO entities(k,v) VALUES(?1,?2) ON CONFLICT(k) DO UPDATE SET v=excluded.v")?;
            let mut a = tx.prepare_cached("INSERT INTO audit(rev,idx,v) VALUES(?1,?2,?3)")?;
            for (i, (k, v, av)) in b.iter().enumerate() { e.execute((k, v))?; a.execute((rev as i64, i as i64, av))?; }
            tx.prepare_cached("INSERT INTO meta(k,v) VALUES('revision',?1) ON CONFLICT(k) DO UPDATE SET v=excluded.v")?.execute([rev as i64])?;
        }
        tx.commit()?; Ok(())
    }
    fn read_group(&self, keys: &[String]) -> R<usize> {
        let tx = self.0.unchecked_transaction()?; // BEGIN DEFERRED
        let mut n = 0;
        {
            let mut s = tx.prepare_cached("SELECT v FROM entities WHERE k=?1")?;
            for k in keys {
                let mut rows = s.query([k])?;
                if let Some(r) = rows.next()? { n += r.get_ref(0)?.as_blob()?.len(); }
            }
        }
        tx.commit()?; Ok(n)
    }
    fn scan(&self) -> R<(usize, usize)> {
        let tx = self.0.unchecked_transaction()?;
        let (mut c, mut b) = (0, 0);
        {
            let mut s = tx.prepare("SELECT k, v FROM entities ORDER BY k")?;
            let mut rows = s.query([])?;
            while let Some(r) = rows.next()? { c += 1; b += r.get_ref(1)?.as_blob()?.len(); }
        }
        tx.commit()?; Ok((c, b))
    }
}

struct Fjall { ks: fjall::Keyspace, e: fjall::PartitionHandle, a: fjall::PartitionHandle, m: fjall::PartitionHandle }
fn fjall_open(dir: &Path) -> R<Fjall> {
    let ks = fjall::Config::new(dir).open()?;
    let o = || fjall::PartitionCreateOptions::default();
    Ok(Fjall { e: ks.open_partition("entities", o())?, a: ks.open_partition("audit", o())?, m: ks.open_partition("meta", o())?, ks })
}
impl Store for Fjall {
    fn write(&mut self, rev: u64, b: &Batch) -> R<()> {
        let mut wb = self.ks.batch().durability(Some(fjall::PersistMode::SyncAll));
        for (i, (k, v, av)) in b.iter().enumerate() {
            wb.insert(&self.e, k.as_bytes(), v.as_slice());
            let mut ak = rev.to_be_bytes().to_vec(); ak.extend_from_slice(&(i as u32).to_be_bytes());
            wb.insert(&self.a, ak, av.as_slice());
        }
        wb.insert(&self.m, "revision", rev.to_be_bytes());
        wb.commit()?; Ok(())
    }
    fn read_group(&self, keys: &[String]) -> R<usize> {
        let s = self.e.snapshot();
        let mut n = 0;
        for k in keys { n += s.get(k)?.map(|v| v.len()).unwrap_or(0); }
        Ok(n)
    }
    fn scan(&self) -> R<(usize, usize)> {
        let (mut c, mut b) = (0, 0);
        for r in self.e.snapshot().iter() { let (_k, v) = r?; c += 1; b += v.len(); }
        Ok((c, b))
    }
}

fn open(kind: &str, dir: &Path) -> R<Box<dyn Store>> {
    Ok(match kind {
        "redb" => Box::new(Redb(redb::Database::create(dir.join("db.redb"))?)),
        "sqlite" => Box::new(sqlite_open(dir)?),
        "fjall" => Box::new(fjall_open(dir)?),
        _ => panic!("unknown kind {kind}"),
    })
}
fn du(dir: &Path) -> u64 {
    let o = std::process::Command::new("du").arg("-sb").arg(dir).output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().parse().unwrap()
}
fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e6
}
fn fresh(name: &str) -> PathBuf {
    let d = PathBuf::from("/tmp/store-choice/data").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
/// Bulk write of n entities in batches of 500; returns elapsed seconds.
fn bulk(s: &mut dyn Store, n: usize) -> R<f64> {
    let batches: Vec<Batch> = (0..n / BATCH).map(|b| make_batch(b * BATCH..(b + 1) * BATCH, b as u64 + 1)).collect();
    let t = Instant::now();
    for (b, batch) in batches.iter().enumerate() { s.write(b as u64 + 1, batch)?; }
    Ok(t.elapsed().as_secs_f64())
}

fn bench(kind: &str) -> R<()> {
    let dir = fresh(kind);
    let mut s = open(kind, &dir)?;
    let w = bulk(s.as_mut(), N)?;
    println!("[{kind}] write 100k: {w:.2}s  {:.1} batches/s  {:.0} entities/s", (N / BATCH) as f64 / w, N as f64 / w);
    println!("[{kind}] du after 100k: {} bytes ({:.1} MiB)", du(&dir), du(&dir) as f64 / 1048576.0);
    // small durable commits: 1 entity update + 1 audit row
    let mut rng = fastrand::Rng::with_seed(7);
    let mut lat = Vec::with_capacity(1000);
    for j in 0..1000u64 {
        let rev = (N / BATCH) as u64 + 1 + j;
        let b = make_batch(std::iter::once(rng.usize(0..N)), rev);
        let t = Instant::now(); s.write(rev, &b)?; lat.push(t.elapsed());
    }
    println!("[{kind}] small commits: p50 {:.0} µs  p99 {:.0} µs", pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    // point reads: warm-up pass then 100k groups of 10
    for g in 0..2000 { let ks: Vec<String> = (0..10).map(|i| key((g * 10 + i) * 5 % N)).collect(); s.read_group(&ks)?; }
    let mut lat = Vec::with_capacity(100_000);
    let mut total = 0;
    for _ in 0..100_000 {
        let ks: Vec<String> = (0..10).map(|_| key(rng.usize(0..N))).collect();
        let t = Instant::now(); total += s.read_group(&ks)?; lat.push(t.elapsed());
    }
    let sum: Duration = lat.iter().sum();
    println!("[{kind}] point reads (10 keys/snapshot): p50 {:.1} µs  p99 {:.1} µs  mean {:.1} µs  ({total} bytes)",
        pct(&mut lat, 0.5), pct(&mut lat, 0.99), sum.as_secs_f64() * 1e6 / 1e5);
    s.scan()?; // warm
    let t = Instant::now(); let (c, b) = s.scan()?;
    println!("[{kind}] range scan: {c} entities, {b} bytes in {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    drop(s);
    std::thread::sleep(Duration::from_millis(500));
    println!("[{kind}] du after close (100k + 1000 small commits): {:.1} MiB", du(&dir) as f64 / 1048576.0);
    let t = Instant::now(); let s = open(kind, &dir)?; s.read_group(&[key(1)])?;
    println!("[{kind}] reopen (100k): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    drop(s);
    if kind == "redb" {
        let t = Instant::now();
        let db = redb::Builder::new().set_check_integrity_on_open(true).open(dir.join("db.redb"))?;
        println!("[redb] reopen with check_integrity_on_open(true): {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        drop(db);
        redb_damage(&dir.join("db.redb"))?;
    }
    if w < 60.0 {
        let d1 = fresh(&format!("{kind}-1m"));
        let mut s = open(kind, &d1)?;
        let w = bulk(s.as_mut(), 1_000_000)?;
        drop(s);
        std::thread::sleep(Duration::from_millis(500));
        println!("[{kind}] write 1M: {w:.1}s  {:.0} entities/s; du after 1M: {} bytes ({:.1} MiB)", 1e6 / w, du(&d1), du(&d1) as f64 / 1048576.0);
        std::fs::remove_dir_all(&d1)?;
    } else { println!("[{kind}] 1M skipped (100k took {w:.1}s)"); }
    Ok(())
}

static LAST_PANIC: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
/// Run f, reporting Ok / Err(Debug) / panic message.
fn probe<T, E: std::fmt::Debug>(label: &str, f: impl FnOnce() -> Result<T, E>) -> Option<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => { println!("  {label}: Ok"); Some(v) }
        Ok(Err(e)) => { println!("  {label}: Err({e:?})"); None }
        Err(_) => { println!("  {label}: PANIC: {}", LAST_PANIC.lock().unwrap()); None }
    }
}
fn scan_all(db: &redb::Database) -> R<usize> {
    let tx = db.begin_read()?;
    let mut n = 0;
    for t in [tx.open_table(ENT)?] { for r in t.iter()? { r?; n += 1; } }
    for r in tx.open_table(AUD)?.iter()? { r?; n += 1; }
    Ok(n)
}
fn redb_damage(good: &Path) -> R<()> {
    let len = std::fs::metadata(good)?.len();
    let mut rnd = vec![0u8; 65536]; fastrand::Rng::with_seed(1).fill(&mut rnd);
    let cases: Vec<(&str, Box<dyn Fn(&Path) -> std::io::Result<()>>)> = vec![
        ("(a) truncated to half", Box::new(move |p| { std::fs::copy(good, p)?; std::fs::OpenOptions::new().write(true).open(p)?.set_len(len / 2) })),
        ("(b1) whole file = 64 KiB random", { let r = rnd.clone(); Box::new(move |p| std::fs::write(p, &r)) }),
        ("(b2) valid file, 64 KiB random at offset 0", { let r = rnd.clone(); Box::new(move |p| { let mut d = std::fs::read(good)?; d[..65536].copy_from_slice(&r); std::fs::write(p, d) }) }),
        ("(b3) valid file, 64 KiB random at middle", { let r = rnd.clone(); Box::new(move |p| { let mut d = std::fs::read(good)?; let m = (d.len() / 2) & !4095; d[m..m + 65536].copy_from_slice(&r); std::fs::write(p, d) }) }),
        ("(c) 0 bytes", Box::new(|p| std::fs::write(p, b""))),
    ];
    for (name, mk) in &cases {
        for check in [false, true] {
            let p = good.with_file_name("damaged.redb");
            mk(&p)?;
            println!("[redb] {name}, Builder::open check_integrity_on_open={check}:");
            if let Some(db) = probe("open", || redb::Builder::new().set_check_integrity_on_open(check).open(&p)) {
                probe("full scan of entities+audit", || scan_all(&db));
            }
        }
        let p = good.with_file_name("damaged.redb");
        mk(&p)?;
        println!("[redb] {name}, Database::create:");
        if let Some(db) = probe("create", || redb::Database::create(&p)) { probe("full scan", || scan_all(&db)); }
    }
    println!("[redb] lock behaviour (first handle open via Database::open):");
    let _first = redb::Database::open(good)?;
    probe("same process Database::create", || redb::Database::create(good).map(|_| ()));
    probe("same process Database::open", || redb::Database::open(good).map(|_| ()));
    probe("same process ReadOnlyDatabase::open", || redb::ReadOnlyDatabase::open(good).map(|_| ()));
    let out = std::process::Command::new(std::env::current_exe()?).arg("lockprobe").arg(good).output()?;
    print!("  second process:\n{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn main() -> R<()> {
    std::panic::set_hook(Box::new(|info| { *LAST_PANIC.lock().unwrap() = info.to_string().replace('\n', " "); }));
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("lockprobe") {
        let p = &args[1];
        probe("Database::create", || redb::Database::create(p).map(|_| ()));
        probe("Database::open", || redb::Database::open(p).map(|_| ()));
        probe("ReadOnlyDatabase::open", || redb::ReadOnlyDatabase::open(p).map(|_| ()));
        return Ok(());
    }
    let e = entity(123, 1); let ev = serde_json::to_vec(&e)?;
    println!("value sizes: entity {} B, audit {} B", ev.len(), audit(1, &e).len());
    let kinds = if args.is_empty() { vec!["redb".into(), "sqlite".into(), "fjall".into()] } else { args };
    for k in &kinds { let t = Instant::now(); bench(k)?; println!("[{k}] total bench time {:.0}s\n", t.elapsed().as_secs_f64()); }
    Ok(())
}
