//! redb against SQLite for the embedded store's work: durable one-record commits (a new key, a
//! login), point lookups by key hash in a large table (an uncached API key), opening a large
//! file (start-up), and the file's size. Prints one table.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

const RECORDS: u64 = 1_000_000;
const COMMITS: u64 = 500;
const LOOKUPS: u64 = 200_000;
const VALUE: usize = 220; // about one serialised API-key record

fn hash(i: u64) -> String {
    format!("{:064x}", (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

struct Row {
    engine: &'static str,
    commit_p50: Duration,
    commit_p99: Duration,
    bulk: Duration,
    open: Duration,
    get_p50: Duration,
    get_p99: Duration,
    size_mb: f64,
}

const TABLE: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("keys");

fn redb_run(dir: &std::path::Path) -> Row {
    use redb::{ReadableDatabase, ReadableTable};
    let path = dir.join("bench.redb");
    let value = vec![7u8; VALUE];
    let db = redb::Database::create(&path).unwrap();
    let mut commits = Vec::new();
    for i in 0..COMMITS {
        let t = Instant::now();
        let tx = db.begin_write().unwrap();
        tx.open_table(TABLE).unwrap().insert(hash(RECORDS + i).as_str(), value.as_slice()).unwrap();
        tx.commit().unwrap();
        commits.push(t.elapsed());
    }
    let t = Instant::now();
    for chunk in 0..(RECORDS / 100_000) {
        let tx = db.begin_write().unwrap();
        {
            let mut table = tx.open_table(TABLE).unwrap();
            for i in chunk * 100_000..(chunk + 1) * 100_000 {
                table.insert(hash(i).as_str(), value.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let bulk = t.elapsed();
    drop(db);
    let t = Instant::now();
    let db = redb::Builder::new().set_cache_size(64 << 20).open(&path).unwrap();
    let open = t.elapsed();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut gets = Vec::new();
    for _ in 0..LOOKUPS {
        let k = hash(rng.random_range(0..RECORDS));
        let t = Instant::now();
        let tx = db.begin_read().unwrap();
        let table = tx.open_table(TABLE).unwrap();
        assert!(table.get(k.as_str()).unwrap().is_some());
        gets.push(t.elapsed());
    }
    let _ = table_len(&db);
    Row {
        engine: "redb 4",
        commit_p50: percentile(commits.clone(), 0.5),
        commit_p99: percentile(commits, 0.99),
        bulk,
        open,
        get_p50: percentile(gets.clone(), 0.5),
        get_p99: percentile(gets, 0.99),
        size_mb: std::fs::metadata(&path).unwrap().len() as f64 / 1e6,
    }
}

fn table_len(db: &redb::Database) -> u64 {
    use redb::{ReadableDatabase, ReadableTableMetadata};
    db.begin_read().unwrap().open_table(TABLE).unwrap().len().unwrap()
}

fn sqlite_run(dir: &std::path::Path) -> Row {
    let path = dir.join("bench.sqlite");
    let value = vec![7u8; VALUE];
    let open_conn = |p: &std::path::Path| {
        let c = rusqlite::Connection::open(p).unwrap();
        // Durable like redb's default commit: WAL with a sync on every commit.
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-65536;")
            .unwrap();
        c
    };
    let c = open_conn(&path);
    c.execute_batch("CREATE TABLE keys (hash TEXT PRIMARY KEY, v BLOB) WITHOUT ROWID").unwrap();
    let mut commits = Vec::new();
    for i in 0..COMMITS {
        let t = Instant::now();
        c.execute("INSERT INTO keys VALUES (?1, ?2)", rusqlite::params![hash(RECORDS + i), value])
            .unwrap();
        commits.push(t.elapsed());
    }
    let t = Instant::now();
    for chunk in 0..(RECORDS / 100_000) {
        let tx = c.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare_cached("INSERT INTO keys VALUES (?1, ?2)").unwrap();
            for i in chunk * 100_000..(chunk + 1) * 100_000 {
                st.execute(rusqlite::params![hash(i), value]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let bulk = t.elapsed();
    c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    drop(c);
    let t = Instant::now();
    let c = open_conn(&path);
    let open = t.elapsed();
    let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
    let mut gets = Vec::new();
    let mut st = c.prepare_cached("SELECT v FROM keys WHERE hash = ?1").unwrap();
    for _ in 0..LOOKUPS {
        let k = hash(rng.random_range(0..RECORDS));
        let t = Instant::now();
        let v: Vec<u8> = st.query_row([k], |r| r.get(0)).unwrap();
        assert_eq!(v.len(), VALUE);
        gets.push(t.elapsed());
    }
    Row {
        engine: "SQLite 3 (rusqlite, WAL, synchronous=FULL)",
        commit_p50: percentile(commits.clone(), 0.5),
        commit_p99: percentile(commits, 0.99),
        bulk,
        open,
        get_p50: percentile(gets.clone(), 0.5),
        get_p99: percentile(gets, 0.99),
        size_mb: std::fs::metadata(&path).unwrap().len() as f64 / 1e6,
    }
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let rows = [redb_run(dir.path()), sqlite_run(dir.path())];
    println!("{RECORDS} records of {VALUE} bytes keyed by a 64-hex hash; {COMMITS} durable single-record commits; {LOOKUPS} random lookups (64 MiB cache)");
    println!("| engine | commit p50 | commit p99 | bulk load | open | lookup p50 | lookup p99 | file |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.2?} | {:.2?} | {:.1?} | {:.2?} | {:.2?} | {:.2?} | {:.0} MB |",
            r.engine, r.commit_p50, r.commit_p99, r.bulk, r.open, r.get_p50, r.get_p99, r.size_mb
        );
    }
}
