//! `kiln bench`: compile time, latency median and p90, peak memory, and per-kernel profiles.

use std::path::PathBuf;

use kiln::format::bytes;
use kiln::Tensor;

use crate::load::{self, Loaded, ModelArgs};
use crate::progress::Progress;
use crate::run::note_coverage;
use crate::Failure;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The model: an ONNX file, .kir text or a compiled .kiln artifact (its load is timed)
    #[arg(value_name = "MODEL")]
    file: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Inputs by name (files as for `kiln run --inputs`; missing ones are random)
    #[arg(long, value_name = "FILE")]
    inputs: Vec<PathBuf>,
    /// Timed runs after warm-up
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Untimed runs first
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Threads for parallel loops (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
    /// Measure the reference interpreter instead of compiled code
    #[arg(long)]
    interp: bool,
    /// Print one JSON object: compile_ms, median_ms, p90_ms, peak_bytes, arena_bytes,
    /// intermediate_bytes
    #[arg(long)]
    json: bool,
    /// Also time every kernel and print the most expensive ones (median over the runs)
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "15")]
    profile: Option<usize>,
}

pub fn bench(a: BenchArgs) -> Result<(), Failure> {
    use std::time::Instant;
    if a.runs == 0 {
        return Err(Failure("--runs must be at least 1".into()));
    }
    let bindings = a.model.bindings();
    let compile = kiln::CompileOptions {
        interpret_only: a.interp,
        threads: a.threads,
        ..Default::default()
    };
    // A .kiln artifact is loaded (and that is timed) instead of compiled.
    let t0 = Instant::now();
    let loaded = {
        let _p = Progress::spinner("loading");
        load::open(&a.file, &a.model, a.model.options(compile))?
    };
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let (name, params) = loaded.interface();
    let inputs = load::prepare_inputs(
        name,
        params,
        &loaded.inputs(),
        &a.inputs,
        true,
        0,
        &bindings,
    )?;
    let mut specialized = false;
    let (exe, what, compile_ms) = match loaded {
        Loaded::Artifact(exe) => (std::sync::Arc::new(exe), "load", load_ms),
        Loaded::Model(model) => {
            let t0 = Instant::now();
            let exe = {
                let _p = Progress::spinner("compiling");
                model.executable_for(&inputs)?
            };
            let ms = load_ms + t0.elapsed().as_secs_f64() * 1e3;
            specialized = model.specializations() > 0;
            if specialized && !a.json {
                eprintln!(
                    "note: the model was specialized for these inputs ({}): compile time \
                     includes that import",
                    model
                        .symbolic()
                        .err()
                        .map_or(String::new(), |e| e.to_string())
                );
            }
            (exe, "compile", ms)
        }
    };
    if !a.json {
        note_coverage(&exe);
    }
    let ordered: Vec<Tensor> = exe
        .params()
        .iter()
        .map(|(p, _)| {
            inputs
                .iter()
                .find(|(n, _)| n == p)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| Failure(format!("missing input \"{p}\"")))
        })
        .collect::<Result<_, _>>()?;
    let mut peak = 0;
    let (mut planned, mut total) = (0, 0);
    let rounds = a.warmup.max(1) + a.runs * (1 + usize::from(a.profile.is_some()));
    let progress = Progress::bar(rounds, "warm-up");
    for _ in 0..a.warmup.max(1) {
        progress.inc();
        let (_, stats) = exe
            .run_stats(&ordered, &bindings)
            .map_err(kiln::Error::from)?;
        peak = peak.max(stats.peak_bytes);
        (planned, total) = (stats.planned_bytes, stats.total_bytes);
    }
    let mut times = Vec::with_capacity(a.runs);
    let mut per_step: Vec<(String, Vec<f64>)> = Vec::new();
    // Each profiled run's time and its steps' (the rest is the runtime's between them).
    let mut profiled: Vec<(f64, f64)> = Vec::new();
    progress.set_message("timed runs");
    for _ in 0..a.runs {
        progress.inc();
        let t = Instant::now();
        let (_, stats) = exe
            .run_stats(&ordered, &bindings)
            .map_err(kiln::Error::from)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        peak = peak.max(stats.peak_bytes);
    }
    if a.profile.is_some() {
        // Separate runs: timing every step perturbs the latency measured above.
        progress.set_message("profiled runs");
        for _ in 0..a.runs {
            progress.inc();
            let t = Instant::now();
            let (_, stats) = exe
                .run_profiled(&ordered, &bindings)
                .map_err(kiln::Error::from)?;
            let steps: f64 = stats.steps.iter().map(|(_, s)| s * 1e3).sum();
            profiled.push((t.elapsed().as_secs_f64() * 1e3, steps));
            if per_step.is_empty() {
                per_step = stats
                    .steps
                    .iter()
                    .map(|(l, _)| (l.clone(), vec![]))
                    .collect();
            }
            for ((_, v), (_, s)) in per_step.iter_mut().zip(&stats.steps) {
                v.push(s * 1e3);
            }
        }
    }
    drop(progress);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let p90 = times[((times.len() * 9) / 10).min(times.len() - 1)];
    if a.json {
        println!(
            "{{\"{what}_ms\": {compile_ms:.3}, \"specialized\": {specialized}, \"median_ms\": {median:.4}, \"p90_ms\": {p90:.4}, \"peak_bytes\": {peak}, \"arena_bytes\": {planned}, \"intermediate_bytes\": {total}}}"
        );
    } else {
        println!(
            "{what:<9} {compile_ms:>10.2} ms{}",
            if specialized {
                "  (specialized for the inputs)"
            } else {
                ""
            }
        );
        println!(
            "median    {median:>10.4} ms  ({} runs after {} warm-up)",
            a.runs, a.warmup
        );
        println!("p90       {p90:>10.4} ms");
        println!("peak      {:>13}", bytes(peak));
        println!(
            "arena     {:>13}  planned for {} of intermediates and scratch",
            bytes(planned),
            bytes(total)
        );
    }
    if let Some(top) = a.profile {
        let mut rows: Vec<(String, f64)> = per_step
            .into_iter()
            .map(|(l, mut v)| {
                v.sort_by(f64::total_cmp);
                (l, v[v.len() / 2])
            })
            .collect();
        let sum: f64 = rows.iter().map(|r| r.1).sum();
        rows.sort_by(|x, y| y.1.total_cmp(&x.1));
        let out = |s: String| {
            if a.json {
                eprintln!("{s}")
            } else {
                println!("{s}")
            }
        };
        // Means: a sum of medians is no median of sums.
        let n = profiled.len().max(1) as f64;
        let (run, steps) = profiled
            .iter()
            .fold((0.0, 0.0), |(r, s), (a, b)| (r + a / n, s + b / n));
        out(format!(
            "profile   {sum:>10.4} ms in {} steps (medians); profiled runs {run:.4} ms, \
             {:.4} ms of it between steps (means); the slowest:",
            rows.len(),
            run - steps
        ));
        for (l, ms) in rows.iter().take(top) {
            out(format!(
                "  {ms:>9.4} ms {:>5.1}%  {l}",
                100.0 * ms / sum.max(1e-12)
            ));
        }
    }
    Ok(())
}
