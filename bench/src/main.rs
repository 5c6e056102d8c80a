//! `sluice-bench`: the load benchmark. The benchmark issue (#7) builds it; until then this binary
//! only says so, so that nobody mistakes it for a measurement.
fn main() {
    eprintln!("sluice-bench: not built yet; see issue 7");
    std::process::exit(2);
}
