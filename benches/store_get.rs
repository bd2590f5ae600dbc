//! Point `get` latency on a table, warm (page cache filled by a first pass): per key, once
//! opening the table as `store get` does (manifest, mappings, key index), and once with the
//! table kept open; prints p50, p99 and max. Usage (scripts/bench.sh runs it):
//! `cargo bench --bench store_get -- LOGDIR TABLE [GETS]`.

use kappa::store::table::{TableRef, Tables};
use kappa::store::view::View;
use std::time::Instant;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [dir, table, rest @ ..] = args.as_slice() else {
        return Err("usage: store_get LOGDIR TABLE [GETS]".into());
    };
    let gets: usize = rest.first().map_or(Ok(10_000), |g| g.parse())?;
    let tables = Tables::new(std::path::Path::new(dir));
    let t = TableRef::parse(table)?;
    let mut v = View::open_ref(&tables, &t)?;
    let keys = v.all()?;
    if keys.is_empty() {
        return Err("the table is empty".into());
    }
    // A fixed pseudo-random sequence of keys, the same every run.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let picks: Vec<Vec<u8>> = (0..gets)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            keys[(x % keys.len() as u64) as usize].0.clone()
        })
        .collect();
    drop(v);
    let run = |reopen: bool| -> Result<Vec<f64>, Box<dyn std::error::Error>> {
        let mut open = View::open_ref(&tables, &t)?;
        let mut lat = Vec::with_capacity(gets);
        for k in &picks {
            let s = Instant::now();
            if reopen {
                open = View::open_ref(&tables, &t)?;
            }
            let off = open.lookup(k)?.ok_or("a listed key is missing")?;
            let vals = open.values(&[(k.clone(), off)])?;
            std::hint::black_box(vals[0].1.len());
            lat.push(s.elapsed().as_secs_f64() * 1e3);
        }
        Ok(lat)
    };
    run(true)?;
    println!(
        "table {table}: {} keys, {gets} gets of random keys, warm",
        keys.len()
    );
    for (what, reopen) in [
        ("opening the table per get", true),
        ("table kept open", false),
    ] {
        let mut lat = run(reopen)?;
        println!(
            "get, {what}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );
    }
    Ok(())
}
