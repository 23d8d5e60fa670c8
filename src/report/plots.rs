//! The report's PNG figures, drawn with plotters into an RGB buffer and encoded with `png`:
//! optimisation history, intermediate-value curves, parameter importances.
//!
//! Text is rasterised by ab_glyph from DejaVu Sans embedded in the binary, so drawing needs no
//! system font libraries.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context};
use plotters::coord::types::{RangedCoordf64, RangedCoordi64};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::importance::Importances;
use crate::frozen::{Direction, FrozenTrial, TrialState};

/// Width and height of every figure, in pixels.
pub const SIZE: (u32, u32) = (1000, 600);

/// A figure, or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub enum Plot {
    /// The encoded PNG file.
    Png(Vec<u8>),
    /// The figure would be empty; the reason, for the summary.
    Skipped(String),
}

/// The font family every text uses; registered once from the embedded DejaVu Sans.
const FONT: &str = "sans-serif";

// Matplotlib's default colours, which Optuna's plots use too.
const COMPLETE: RGBColor = RGBColor(31, 119, 180);
const PRUNED: RGBColor = RGBColor(255, 127, 14);
const BEST: RGBColor = RGBColor(214, 39, 40);
const OTHER: RGBColor = RGBColor(127, 127, 127);

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawError = DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;
type DrawResult = Result<(), DrawError>;
type LineChart<'a, 'b> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordi64, RangedCoordf64>>;
/// A polyline of `(step, value)` points.
type Curve = Vec<(i64, f64)>;

/// Objective value per trial number: COMPLETE trials as blue dots, PRUNED trials' last
/// intermediate value as orange dots, and the best value so far over COMPLETE trials as a red
/// staircase (lowest for minimize, highest for maximize).
pub fn history(trials: &[Arc<FrozenTrial>], direction: Direction) -> anyhow::Result<Plot> {
    let finite = |state: TrialState| -> Vec<(i64, f64)> {
        trials
            .iter()
            .filter(|t| t.state == state)
            .filter_map(|t| t.value.filter(|v| v.is_finite()).map(|v| (t.number, v)))
            .collect()
    };
    let (complete, pruned) = (finite(TrialState::Complete), finite(TrialState::Pruned));
    if complete.is_empty() && pruned.is_empty() {
        return Ok(Plot::Skipped("no COMPLETE or PRUNED trial has a finite value yet".into()));
    }
    let best_line = best_so_far(&complete, direction);
    let all = complete.iter().chain(&pruned);
    let x = int_range(all.clone().map(|p| p.0));
    let y = padded(all.map(|p| p.1));
    let title = format!("Optimisation history ({})", direction.as_str().to_lowercase());
    render(|root| {
        let mut chart = chart(&root, &title, x, y)?;
        chart.configure_mesh().x_desc("trial").y_desc("objective value").label_style((FONT, 14)).draw()?;
        if !pruned.is_empty() {
            chart
                .draw_series(pruned.iter().map(|&p| Circle::new(p, 3, PRUNED.filled())))?
                .label(format!("pruned ({}, last intermediate value)", pruned.len()))
                .legend(|p| Circle::new(p, 4, PRUNED.filled()));
        }
        if !complete.is_empty() {
            chart
                .draw_series(complete.iter().map(|&p| Circle::new(p, 3, COMPLETE.filled())))?
                .label(format!("complete ({})", complete.len()))
                .legend(|p| Circle::new(p, 4, COMPLETE.filled()));
            chart
                .draw_series(LineSeries::new(best_line.iter().copied(), BEST.stroke_width(2)))?
                .label("best so far")
                .legend(|(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], BEST.stroke_width(2)));
        }
        legend(&mut chart)
    })
    .map(Plot::Png)
}

/// The best value so far as a staircase through `(trial number, value)` points in number order:
/// a vertical step at each trial that improved on all before it, flat up to the last trial.
fn best_so_far(points: &[(i64, f64)], direction: Direction) -> Vec<(i64, f64)> {
    let mut line: Vec<(i64, f64)> = Vec::new();
    for &(n, v) in points {
        match line.last().map(|p| p.1) {
            None => line.push((n, v)),
            Some(b) if direction.better(v, b) => line.extend([(n, b), (n, v)]),
            Some(_) => {}
        }
    }
    if let (Some(&(_, b)), Some(&(last, _))) = (line.last(), points.last()) {
        line.push((last, b));
    }
    line
}

/// Intermediate values against step, one line per trial that reported any: COMPLETE trials in
/// blue, PRUNED in orange (with a dot where each stopped), others (RUNNING, FAIL) in grey.
pub fn intermediate(trials: &[Arc<FrozenTrial>]) -> anyhow::Result<Plot> {
    let curve = |t: &FrozenTrial| -> Curve {
        t.intermediate_values.iter().filter(|(_, v)| v.is_finite()).map(|(&s, &v)| (s, v)).collect()
    };
    let mut classes: [(&str, RGBColor, Vec<Curve>); 3] =
        [("running or failed", OTHER, Vec::new()), ("pruned", PRUNED, Vec::new()), ("complete", COMPLETE, Vec::new())];
    for t in trials {
        let c = curve(t);
        if c.is_empty() {
            continue;
        }
        let k = match t.state {
            TrialState::Complete => 2,
            TrialState::Pruned => 1,
            _ => 0,
        };
        classes[k].2.push(c);
    }
    let points = || classes.iter().flat_map(|c| c.2.iter().flatten());
    if points().next().is_none() {
        return Ok(Plot::Skipped("no trial reported a finite intermediate value".into()));
    }
    let x = int_range(points().map(|p| p.0));
    let y = padded(points().map(|p| p.1));
    render(|root| {
        let mut chart = chart(&root, "Intermediate values", x, y)?;
        chart.configure_mesh().x_desc("step").y_desc("intermediate value").label_style((FONT, 14)).draw()?;
        for (name, color, curves) in &classes {
            for (i, c) in curves.iter().enumerate() {
                let series = chart.draw_series(LineSeries::new(c.iter().copied(), color.mix(0.7).stroke_width(1)))?;
                if i == 0 {
                    let color = *color;
                    series
                        .label(format!("{name} ({})", curves.len()))
                        .legend(move |(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], color.stroke_width(2)));
                }
                let last = *c.last().expect("curves are not empty");
                chart.draw_series(std::iter::once(Circle::new(last, 2, color.filled())))?;
            }
        }
        legend(&mut chart)
    })
    .map(Plot::Png)
}

/// Matplotlib's `tab10` colours, one per PBT member (repeating past ten).
const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One PBT hyperparameter's schedule: per member (a colour each), the value in force over
/// environment steps, piecewise constant from each segment's first step to its last; a marker
/// where a member took another's learner. `values` gives, per segment, `(member, start, end,
/// value, exploited)`; categorical values are drawn at their choice index, named in the title.
pub fn pbt_schedule(
    name: &str,
    values: &[(usize, i64, i64, f64, bool)],
    categories: Option<&[String]>,
) -> anyhow::Result<Plot> {
    if values.is_empty() {
        return Ok(Plot::Skipped(format!("no segment has a value of `{name}`")));
    }
    let members = values.iter().map(|v| v.0).max().unwrap_or(0) + 1;
    let x = int_range(values.iter().flat_map(|v| [v.1, v.2]));
    let y = padded(values.iter().map(|v| v.3));
    let title = match categories {
        Some(c) => format!("PBT schedule of {name} (0..{}: {})", c.len() - 1, c.join(", ")),
        None => format!("PBT schedule of {name}"),
    };
    render(|root| {
        let mut chart = chart(&root, &title, x, y)?;
        chart.configure_mesh().x_desc("environment step").y_desc(name).label_style((FONT, 14)).draw()?;
        for m in 0..members {
            let color = TAB10[m % TAB10.len()];
            let mut segs: Vec<_> = values.iter().filter(|v| v.0 == m).collect();
            segs.sort_by_key(|v| v.1);
            let line: Vec<(i64, f64)> = segs.iter().flat_map(|v| [(v.1, v.3), (v.2, v.3)]).collect();
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))?
                .label(format!("member {m}"))
                .legend(move |(x, y)| PathElement::new(vec![(x - 8, y), (x + 8, y)], color.stroke_width(2)));
            chart.draw_series(segs.iter().filter(|v| v.4).map(|v| Circle::new((v.1, v.3), 4, color.filled())))?;
        }
        legend(&mut chart)
    })
    .map(Plot::Png)
}

/// A horizontal bar per parameter, the most important at the top, with its value.
pub fn importances(imp: &Importances) -> anyhow::Result<Vec<u8>> {
    let n = imp.params.len();
    let rows: Vec<(String, f64)> = imp.params.iter().rev().cloned().collect();
    let top = rows.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let label_width = rows.iter().map(|p| p.0.chars().count()).max().unwrap_or(0) as u32 * 9 + 20;
    let title = format!("Parameter importances (fANOVA, {} COMPLETE trials)", imp.n_trials);
    render(|root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(&title, (FONT, 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(label_width.min(400))
            .build_cartesian_2d(0.0..top * 1.15, Rows(n))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_label_formatter(&|v| rows.get(v.floor() as usize).map(|p| p.0.clone()).unwrap_or_default())
            .x_desc("importance (share of the objective's variance)")
            .label_style((FONT, 14))
            .draw()?;
        let pad = if n > 1 { 0.15 } else { 0.3 };
        chart.draw_series(rows.iter().enumerate().map(|(i, (_, v))| {
            let i = i as f64;
            Rectangle::new([(0.0, i + pad), (*v, i + 1.0 - pad)], COMPLETE.filled())
        }))?;
        let style = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series(
            rows.iter()
                .enumerate()
                .map(|(i, (_, v))| Text::new(format!(" {v:.3}"), (*v, i as f64 + 0.5), style.clone())),
        )?;
        Ok(())
    })
}

/// A vertical axis of `n` rows: row `i` (from the bottom) spans `[i, i + 1]`, with one tick at
/// its middle for its label.
struct Rows(usize);

impl Ranged for Rows {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        limit.0 + ((limit.1 - limit.0) as f64 * value / self.0.max(1) as f64).round() as i32
    }

    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64 + 0.5).collect()
    }

    fn range(&self) -> Range<f64> {
        0.0..self.0 as f64
    }
}

/// The chart frame shared by the line plots.
fn chart<'a, 'b>(
    root: &'a Area<'b>,
    title: &str,
    x: Range<i64>,
    y: Range<f64>,
) -> Result<LineChart<'a, 'b>, DrawError> {
    ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(80)
        .build_cartesian_2d(x, y)
}

fn legend<'a, 'b: 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, Cartesian2d<X, Y>>,
) -> DrawResult {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
}

/// Draws on a white canvas of `SIZE` and returns it as a PNG file.
fn render(draw: impl FnOnce(Area<'_>) -> DrawResult) -> anyhow::Result<Vec<u8>> {
    register_font()?;
    let (w, h) = SIZE;
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("drawing: {e}"))?;
        draw(root.clone()).map_err(|e| anyhow!("drawing: {e}"))?;
        root.present().map_err(|e| anyhow!("drawing: {e}"))?;
    }
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().context("encoding PNG")?;
    writer.write_image_data(&rgb).context("encoding PNG")?;
    writer.finish().context("encoding PNG")?;
    Ok(png)
}

fn register_font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font could not be read"))
    }
}

/// `min - 1 .. max + 1` over integer positions (trial numbers, steps).
fn int_range(values: impl Iterator<Item = i64>) -> Range<i64> {
    let (lo, hi) = values.fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo - 1)..(hi + 1)
}

/// The values' range with 5% room on each side (one unit, or 10% of the value, when they are
/// all equal).
fn padded(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let span = hi - lo;
    if span > 1e-12 * lo.abs().max(hi.abs()) {
        (lo - 0.05 * span)..(hi + 0.05 * span)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { 0.1 * lo.abs() };
        (lo - pad)..(hi + pad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(bytes: &[u8]) -> (u32, u32) {
        let reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
        (reader.info().width, reader.info().height)
    }

    #[test]
    fn one_or_many_importance_bars_draw() {
        for n in [1, 2, 12] {
            let params = (0..n).map(|i| (format!("param_{i}"), 1.0 / n as f64)).collect();
            let png = importances(&Importances { params, n_trials: 10 }).unwrap();
            assert_eq!(png_size(&png), SIZE);
        }
    }

    fn trial(number: i64, state: TrialState, value: Option<f64>, ivs: &[(i64, f64)]) -> Arc<FrozenTrial> {
        let mut t = FrozenTrial::new(number, number, state);
        t.value = value;
        t.intermediate_values = ivs.iter().copied().collect();
        Arc::new(t)
    }

    #[test]
    fn the_best_line_follows_the_direction() {
        let pts = [(0, 3.0), (2, 5.0), (3, 1.0), (5, 2.0)];
        assert_eq!(best_so_far(&pts, Direction::Minimize), vec![(0, 3.0), (3, 3.0), (3, 1.0), (5, 1.0)]);
        assert_eq!(best_so_far(&pts, Direction::Maximize), vec![(0, 3.0), (2, 3.0), (2, 5.0), (5, 5.0)]);
        assert_eq!(best_so_far(&[(4, 1.0)], Direction::Minimize), vec![(4, 1.0), (4, 1.0)]);
        assert!(best_so_far(&[], Direction::Minimize).is_empty());
    }

    #[test]
    fn figures_without_data_are_skipped_and_sparse_ones_drawn() {
        let none = [trial(0, TrialState::Fail, None, &[]), trial(1, TrialState::Running, None, &[])];
        assert!(matches!(history(&none, Direction::Minimize).unwrap(), Plot::Skipped(_)));
        assert!(matches!(intermediate(&none).unwrap(), Plot::Skipped(_)));
        // One trial, or only pruned ones, or only non-finite values: still a figure or a reason.
        let one = [trial(0, TrialState::Complete, Some(2.0), &[(0, 2.0)])];
        let pruned = [trial(0, TrialState::Pruned, Some(5.0), &[(0, 7.0), (1, 5.0)])];
        let inf = [trial(0, TrialState::Complete, Some(f64::INFINITY), &[(0, f64::NAN)])];
        for trials in [&one[..], &pruned[..]] {
            for plot in [history(trials, Direction::Maximize).unwrap(), intermediate(trials).unwrap()] {
                let Plot::Png(png) = plot else { panic!("expected a figure") };
                assert_eq!(png_size(&png), SIZE);
            }
        }
        assert!(matches!(history(&inf, Direction::Minimize).unwrap(), Plot::Skipped(_)));
        assert!(matches!(intermediate(&inf).unwrap(), Plot::Skipped(_)));
    }

    #[test]
    fn ranges_have_room_around_the_data() {
        assert_eq!(int_range([3, 7, 5].into_iter()), 2..8);
        assert_eq!(int_range([0].into_iter()), -1..1);
        assert_eq!(padded([0.0, 10.0].into_iter()), -0.5..10.5);
        assert_eq!(padded([2.0].into_iter()), 1.8..2.2);
        assert_eq!(padded([0.0, 0.0].into_iter()), -1.0..1.0);
    }
}
