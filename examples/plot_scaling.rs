//! Plot a scaling sweep: how the steady-state time of a forward pass grows with sequence length,
//! batch and depth, lancet (FP8) against PyTorch's best recipe (FP8 + CUDA graph), as one SVG with
//! a panel per sweep.
//!
//! ```text
//! cargo run --release --example plot_scaling -- SWEEP.json OUT.svg [--force]
//! ```
//!
//! OUT is never overwritten unless `--force` is given. A text table of every point, with the ratio
//! lancet/PyTorch, goes to stdout; points that have no timing for a series go to stderr.
//!
//! # Input
//!
//! ```text
//! {"device": "NVIDIA H100 80GB HBM3", "date": "2026-11-25",
//!  "points": [ {"sweep": "seq" | "batch" | "layers", "layers": 8, "batch": 2, "seq": 2048,
//!               // steady-state medians, either may be null (failed/not run)
//!               "lancet_ms": 4.8, "torch_ms": 5.1,
//!               // optional one-time costs, may be null/absent
//!               "lancet_ready_s": 1.6, "torch_compile_s": 3.4
//!  }, ... ]}
//! ```
//!
//! `device`, `date`, `points` and, in each point, `sweep`, `layers`, `batch`, `seq`, `lancet_ms`
//! and `torch_ms` must be present (the two times may be null, so that a typo in their names is an
//! error rather than a silently empty series). Counts are positive integers, times in milliseconds
//! between 1e-6 and 1e9, one-time costs in seconds non-negative. Other fields are ignored, so the
//! producer can add some. `sweep` names the one quantity that varies; within a sweep the other two
//! must hold the same values at every point, and no value of the varying one may repeat.
//!
//! # Output
//!
//! Three panels side by side (sequence length, batch, layers), each titled with what it holds
//! fixed. Both axes are logarithmic: sweeps double their sizes, times span more than a decade, a
//! power law shows as a straight line whose slope is the scaling exponent, and the vertical gap
//! between the two series is their ratio wherever it is read. Ticks sit at the swept values and at
//! 1-2-5 steps of milliseconds. Each lancet point that has a PyTorch time beside it is labelled
//! with lancet/PyTorch (below 1: lancet is faster), on the side away from the PyTorch point.
//! The one-time costs appear only in the table.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::{Map, Value};

#[derive(Parser)]
#[command(about = "Plot a scaling sweep (lancet vs PyTorch steady-state time) as an SVG")]
struct Args {
    /// Scaling-sweep JSON to read.
    sweep: PathBuf,
    /// SVG to write.
    out: PathBuf,
    /// Overwrite OUT if it exists.
    #[arg(long)]
    force: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let name = args.sweep.display();
    let text = std::fs::read_to_string(&args.sweep).with_context(|| format!("reading {name}"))?;
    let json: Value = serde_json::from_str(&text).with_context(|| format!("{name}: not valid JSON"))?;
    let file = SweepFile::from_json(&json).with_context(|| name.to_string())?;
    let panels = Panel::group(&file.points).with_context(|| name.to_string())?;
    let svg = render(&file, &panels)?;
    write_new(&args.out, &svg, args.force)?;
    print_table(&panels);
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The sweep file
// ---------------------------------------------------------------------------------------------

/// The quantity a point's sweep varies; the other two are held fixed.
#[derive(Clone, Copy, PartialEq)]
enum Sweep {
    Seq,
    Batch,
    Layers,
}

impl Sweep {
    /// Panel order, left to right.
    const ALL: [Sweep; 3] = [Sweep::Seq, Sweep::Batch, Sweep::Layers];

    fn name(self) -> &'static str {
        match self {
            Sweep::Seq => "seq",
            Sweep::Batch => "batch",
            Sweep::Layers => "layers",
        }
    }

    fn axis_label(self) -> &'static str {
        match self {
            Sweep::Seq => "sequence length (tokens)",
            Sweep::Batch => "batch size",
            Sweep::Layers => "layers",
        }
    }

    /// The varying quantity at `point`.
    fn x(self, point: &Point) -> u64 {
        match self {
            Sweep::Seq => point.seq,
            Sweep::Batch => point.batch,
            Sweep::Layers => point.layers,
        }
    }

    /// What `point` holds fixed, e.g. "batch 2, 8 layers": the panel's title, and what all the
    /// points of one sweep must agree on.
    fn held_fixed(self, point: &Point) -> String {
        let layers = match point.layers {
            1 => "1 layer".to_string(),
            n => format!("{n} layers"),
        };
        match self {
            Sweep::Seq => format!("batch {}, {layers}", point.batch),
            Sweep::Batch => format!("seq {}, {layers}", point.seq),
            Sweep::Layers => format!("batch {}, seq {}", point.batch, point.seq),
        }
    }
}

/// One measured configuration.
struct Point {
    /// Position in the file's `points`, to name it in messages.
    index: usize,
    sweep: Sweep,
    layers: u64,
    batch: u64,
    seq: u64,
    /// Steady-state medians in milliseconds; `None` where that side failed or was not run.
    lancet_ms: Option<f64>,
    torch_ms: Option<f64>,
    /// One-time costs in seconds: lancet's compile-to-ready, PyTorch's `torch.compile`.
    lancet_ready_s: Option<f64>,
    torch_compile_s: Option<f64>,
}

impl Point {
    /// lancet/PyTorch: below 1, lancet is faster.
    fn ratio(&self) -> Option<f64> {
        Some(self.lancet_ms? / self.torch_ms?)
    }

    /// How messages name the point: "points[4] (seq 8192, batch 2, 8 layers)".
    fn label(&self) -> String {
        format!(
            "points[{}] ({} {}, {})",
            self.index,
            self.sweep.name(),
            self.sweep.x(self),
            self.sweep.held_fixed(self)
        )
    }
}

struct SweepFile {
    device: String,
    date: String,
    points: Vec<Point>,
}

impl SweepFile {
    /// Reads the sweep by hand from a `serde_json::Value` rather than deriving `Deserialize`, so
    /// that every error names the offending field (`points[3].lancet_ms`), which serde's type
    /// errors do not.
    fn from_json(json: &Value) -> Result<Self> {
        let top = Fields::new(json, String::new())?;
        let points = top.array("points")?;
        if points.is_empty() {
            bail!("points is empty: nothing to plot");
        }
        let points = points
            .iter()
            .enumerate()
            .map(|(index, value)| {
                let fields = Fields::new(value, format!("points[{index}]"))?;
                Ok(Point {
                    index,
                    sweep: fields.sweep("sweep")?,
                    layers: fields.count("layers")?,
                    batch: fields.count("batch")?,
                    seq: fields.count("seq")?,
                    lancet_ms: fields.time_ms("lancet_ms")?,
                    torch_ms: fields.time_ms("torch_ms")?,
                    lancet_ready_s: fields.seconds("lancet_ready_s")?,
                    torch_compile_s: fields.seconds("torch_compile_s")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(SweepFile {
            device: top.string("device")?.to_string(),
            date: top.string("date")?.to_string(),
            points,
        })
    }
}

/// Steady-state times (ms) outside this range, 1 ns to about 12 days, must be a unit mistake. The
/// bounds also keep the padded log axis well inside what an `f64` holds: zero has no logarithm.
const TIME_MS: RangeInclusive<f64> = 1e-6..=1e9;

/// A JSON object and its path in the file (empty at the top), to name fields in errors.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Fields<'a> {
    /// `value` at `path`, which must be an object.
    fn new(value: &'a Value, path: String) -> Result<Self> {
        match value.as_object() {
            Some(map) => Ok(Fields { map, path }),
            None if path.is_empty() => bail!("expected a JSON object at the top, found {}", describe(value)),
            None => bail!("{path}: expected an object, found {}", describe(value)),
        }
    }

    fn path_of(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn required(&self, name: &str) -> Result<&'a Value> {
        self.map
            .get(name)
            .with_context(|| format!("{}: missing", self.path_of(name)))
    }

    fn string(&self, name: &str) -> Result<&'a str> {
        let value = self.required(name)?;
        value.as_str().with_context(|| {
            format!(
                "{}: expected a string, found {}",
                self.path_of(name),
                describe(value)
            )
        })
    }

    fn array(&self, name: &str) -> Result<&'a [Value]> {
        let value = self.required(name)?;
        value.as_array().map(Vec::as_slice).with_context(|| {
            format!(
                "{}: expected an array, found {}",
                self.path_of(name),
                describe(value)
            )
        })
    }

    fn sweep(&self, name: &str) -> Result<Sweep> {
        let value = self.required(name)?;
        Sweep::ALL
            .into_iter()
            .find(|s| value.as_str() == Some(s.name()))
            .with_context(|| {
                format!(
                    r#"{}: expected "seq", "batch" or "layers", found {}"#,
                    self.path_of(name),
                    describe(value)
                )
            })
    }

    /// A positive integer (a layer count, batch or sequence length; zero has no place on a log axis).
    fn count(&self, name: &str) -> Result<u64> {
        let value = self.required(name)?;
        value.as_u64().filter(|&n| n > 0).with_context(|| {
            format!(
                "{}: expected a positive integer, found {}",
                self.path_of(name),
                describe(value)
            )
        })
    }

    /// A steady-state time: must be present, may be null, else within `TIME_MS`.
    fn time_ms(&self, name: &str) -> Result<Option<f64>> {
        let value = self.required(name)?;
        let time = self.optional_number(name)?;
        if time.is_some_and(|ms| !TIME_MS.contains(&ms)) {
            bail!(
                "{}: expected milliseconds from {:e} to {:e}, or null, found {}",
                self.path_of(name),
                TIME_MS.start(),
                TIME_MS.end(),
                describe(value)
            );
        }
        Ok(time)
    }

    /// A one-time cost: may be absent or null, else non-negative.
    fn seconds(&self, name: &str) -> Result<Option<f64>> {
        let seconds = self.optional_number(name)?;
        if let Some(s) = seconds.filter(|&s| s < 0.0) {
            bail!(
                "{}: expected a non-negative number of seconds or null, found {s}",
                self.path_of(name)
            );
        }
        Ok(seconds)
    }

    fn optional_number(&self, name: &str) -> Result<Option<f64>> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => value.as_f64().map(Some).with_context(|| {
                format!(
                    "{}: expected a number or null, found {}",
                    self.path_of(name),
                    describe(value)
                )
            }),
        }
    }
}

/// A JSON value as an error message shows it.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Panels
// ---------------------------------------------------------------------------------------------

/// One sweep's points, in increasing order of the varying quantity.
struct Panel<'a> {
    sweep: Sweep,
    points: Vec<&'a Point>,
}

impl<'a> Panel<'a> {
    /// One panel per sweep, in `Sweep::ALL` order (a sweep without points gets an empty panel).
    fn group(points: &'a [Point]) -> Result<Vec<Panel<'a>>> {
        Sweep::ALL
            .into_iter()
            .map(|sweep| Panel::of(sweep, points))
            .collect()
    }

    /// The points of `sweep`. Points that disagree on what is held fixed, or repeat a value of what
    /// varies, are an error: the line through them would mix configurations.
    fn of(sweep: Sweep, points: &'a [Point]) -> Result<Panel<'a>> {
        let name = sweep.name();
        let mut mine: Vec<&Point> = points.iter().filter(|p| p.sweep == sweep).collect();
        mine.sort_by_key(|p| sweep.x(p));
        for pair in mine.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if sweep.x(a) == sweep.x(b) {
                bail!(
                    "the {name} sweep has {name} {} twice: points[{}] and points[{}]",
                    sweep.x(a),
                    a.index,
                    b.index
                );
            }
        }
        if let Some(first) = mine.first() {
            let fixed = sweep.held_fixed(first);
            if let Some(other) = mine.iter().find(|p| sweep.held_fixed(p) != fixed) {
                bail!(
                    "the {name} sweep must hold the rest fixed; points[{}] has {fixed}, points[{}] has {}",
                    first.index,
                    other.index,
                    sweep.held_fixed(other)
                );
            }
        }
        Ok(Panel { sweep, points: mine })
    }

    /// What the panel holds fixed, or that its sweep is missing.
    fn title(&self) -> String {
        match self.points.first() {
            Some(first) => self.sweep.held_fixed(first),
            None => format!("no {} sweep in the file", self.sweep.name()),
        }
    }

    /// (x, ms) of one series, skipping (and reporting on stderr) the points that lack it.
    fn series(&self, series: &str, time: fn(&Point) -> Option<f64>) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .filter_map(|p| {
                let ms = time(p);
                if ms.is_none() {
                    eprintln!("skipped: {}: no {series} time", p.label());
                }
                Some((self.sweep.x(p) as f64, ms?))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Drawing
// ---------------------------------------------------------------------------------------------

const SIZE: (u32, u32) = (1500, 520);
const FONT: &str = "sans-serif";
const LANCET: &str = "lancet FP8";
const TORCH: &str = "PyTorch best FP8 + CUDA graph";
const LANCET_COLOR: RGBColor = RGBColor(31, 119, 180);
const TORCH_COLOR: RGBColor = RGBColor(255, 127, 14);

/// The whole figure as SVG text, kept in memory so that nothing is written unless it all drew.
fn render(file: &SweepFile, panels: &[Panel]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let title = format!(
            "Steady-state forward time, lancet vs PyTorch: {}, {}",
            file.device, file.date
        );
        let body = root.titled(&title, (FONT, 22))?.titled(
            "labels: lancet / PyTorch time (below 1\u{d7}: lancet faster); both axes logarithmic",
            (FONT, 14).into_font().color(&BLACK.mix(0.6)),
        )?;
        for (area, panel) in body.split_evenly((1, panels.len())).iter().zip(panels) {
            draw_panel(area, panel)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// One sweep: both series, the ratio labels and the legend; or, without any timing, a note.
fn draw_panel(area: &DrawingArea<SVGBackend, Shift>, panel: &Panel) -> Result<()> {
    let lancet = panel.series(LANCET, |p| p.lancet_ms);
    let torch = panel.series(TORCH, |p| p.torch_ms);
    let plotted = || lancet.iter().chain(&torch);
    let (Some((x_lo, x_hi)), Some((t_lo, t_hi))) = (
        min_max(plotted().map(|&(x, _)| x)),
        min_max(plotted().map(|&(_, ms)| ms)),
    ) else {
        // Nothing to plot: keep the panel's place, say why.
        let title = panel.title();
        let style = TextStyle::from((FONT, 18).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        let (w, h) = area.dim_in_pixel();
        let message = if panel.points.is_empty() {
            title
        } else {
            format!("{title}: no timings")
        };
        area.draw_text(&message, &style, (w as i32 / 2, h as i32 / 2))?;
        return Ok(());
    };

    // Log-axis padding: half a doubling either side of x; below and above the times, fractions of
    // their span in decades (taken as at least one, so that a flat sweep still gets ticks), more
    // above for the legend (the data rise to the right, so the upper left stays clear).
    let x_range = x_lo / 2f64.sqrt()..x_hi * 2f64.sqrt();
    let decades = (t_hi / t_lo).log10().max(1.0);
    let y_range = t_lo / 10f64.powf(0.12 * decades)..t_hi * 10f64.powf(0.35 * decades);
    let mut x_ticks: Vec<f64> = plotted().map(|&(x, _)| x).collect();
    x_ticks.sort_by(f64::total_cmp);
    x_ticks.dedup();
    let y_ticks = time_ticks(y_range.start, y_range.end);

    let mut chart = ChartBuilder::on(area)
        .caption(panel.title(), (FONT, 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            x_range.log_scale().with_key_points(x_ticks),
            y_range.log_scale().with_key_points(y_ticks),
        )?;
    chart
        .configure_mesh()
        .x_desc(panel.sweep.axis_label())
        .y_desc("steady-state time (ms)")
        .x_label_formatter(&|x| format!("{x}"))
        .y_label_formatter(&|ms| format_ms(*ms))
        .bold_line_style(BLACK.mix(0.1))
        .draw()?;

    for (label, color, data) in [(LANCET, LANCET_COLOR, &lancet), (TORCH, TORCH_COLOR, &torch)] {
        chart
            .draw_series(LineSeries::new(data.iter().copied(), color.filled().stroke_width(2)).point_size(4))?
            .label(label)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (20, 0)], color.stroke_width(2))
                    + Circle::new((10, 0), 4, color.filled())
            });
    }

    // The ratio beside each lancet point, on the side away from the PyTorch point.
    let ratio_style = TextStyle::from((FONT, 13).into_font())
        .color(&LANCET_COLOR)
        .pos(Pos::new(HPos::Center, VPos::Center));
    chart.draw_series(panel.points.iter().filter_map(|p| {
        let ratio = p.ratio()?;
        let dy = if ratio <= 1.0 { 14 } else { -14 };
        Some(
            EmptyElement::at((panel.sweep.x(p) as f64, p.lancet_ms?))
                + Text::new(format!("{ratio:.2}\u{d7}"), (0, dy), ratio_style.clone()),
        )
    }))?;

    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

/// The smallest and largest of `values`, `None` if there are none.
fn min_max(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// Ticks for a log time axis over `lo..hi`: 1-2-5 steps per decade; finer steps where that leaves
/// fewer than three (a sweep whose times barely move), only powers of ten where it crowds the axis.
fn time_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = lo.log10().floor() as i32..=hi.log10().ceil() as i32;
    let in_range = |mantissas: &[f64]| -> Vec<f64> {
        decades
            .clone()
            .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|t| (lo..=hi).contains(t))
            .collect()
    };
    let ticks = in_range(&[1.0, 2.0, 5.0]);
    match ticks.len() {
        0..=2 => in_range(&[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]),
        3..=12 => ticks,
        _ => in_range(&[1.0]),
    }
}

/// A time tick label with three significant digits and no trailing zeros ("0.05", "1.5", "20").
fn format_ms(ms: f64) -> String {
    let decimals = (2 - ms.log10().floor() as i32).max(0) as usize;
    let text = format!("{ms:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Writes `svg` to `out`, creating it atomically unless `force` (so an existing file is never
/// replaced by accident, even if it appeared after the run started).
fn write_new(out: &Path, svg: &str, force: bool) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(out).map_err(|e| match e.kind() {
        ErrorKind::AlreadyExists => anyhow!("{} exists; pass --force to overwrite it", out.display()),
        _ => anyhow!(e).context(format!("creating {}", out.display())),
    })?;
    file.write_all(svg.as_bytes())
        .with_context(|| format!("writing {}", out.display()))
}

/// Every point, panel by panel, with the ratio and the one-time costs; "-" where a value is missing.
fn print_table(panels: &[Panel]) {
    let cell = |value: Option<f64>, decimals: usize| match value {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".to_string(),
    };
    println!(
        "{:<6} {:>6} {:>5} {:>6} {:>10} {:>10} {:>13} {:>14} {:>15}",
        "sweep",
        "layers",
        "batch",
        "seq",
        "lancet ms",
        "torch ms",
        "lancet/torch",
        "lancet ready s",
        "torch compile s"
    );
    for panel in panels {
        for p in &panel.points {
            let ratio = p.ratio().map_or("-".to_string(), |r| format!("{r:.2}\u{d7}"));
            println!(
                "{:<6} {:>6} {:>5} {:>6} {:>10} {:>10} {:>13} {:>14} {:>15}",
                panel.sweep.name(),
                p.layers,
                p.batch,
                p.seq,
                cell(p.lancet_ms, 3),
                cell(p.torch_ms, 3),
                ratio,
                cell(p.lancet_ready_s, 2),
                cell(p.torch_compile_s, 2)
            );
        }
    }
}
