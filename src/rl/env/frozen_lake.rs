//! FrozenLake as Gymnasium 1.x's `gymnasium/envs/toy_text/frozen_lake.py`: the same transition
//! table `P` (slippery moves, `success_rate`, `reward_schedule`), plus lab 003's hole penalty.

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::render::{Canvas, Color};
use super::{reseed, unseeded_rng, ActionSpace, Env, Frame, Obs, ObsSpace, Step};
use crate::error::InputError;

/// Gymnasium's preset maps (`MAPS` in frozen_lake.py).
const MAP_4X4: [&str; 4] = ["SFFF", "FHFH", "FFFH", "HFFG"];
const MAP_8X8: [&str; 8] =
    ["SFFFFFFF", "FFFFFFFF", "FFFHFFFF", "FFFFFHFF", "FFFHFFFF", "FHHFFFHF", "FHFFHFHF", "FFFHFFFG"];

const LEFT: usize = 0;
const DOWN: usize = 1;
const RIGHT: usize = 2;
const UP: usize = 3;

/// How states are observed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrozenLakeObs {
    /// `row * ncol + col` as [`Obs::Index`], as Gymnasium (tabular agents).
    #[default]
    Index,
    /// A one-hot `f32` vector of length `nrow * ncol` (DQN).
    OneHot,
}

/// Options of `FrozenLake-v1` / `FrozenLake8x8-v1` (Gymnasium's `FrozenLakeEnv` keyword arguments,
/// with `desc` spelled `map`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenLakeConfig {
    /// A custom map as rows of `S` (start), `F` (frozen), `H` (hole), `G` (goal), e.g.
    /// `[SFFF, FFFF, HHFF, HHFG]`; `null` uses `map_name`.
    #[serde(default, alias = "desc")]
    pub map: Option<Vec<String>>,
    /// Preset map used when `map` is null: `4x4` or `8x8`.
    #[serde(default = "default_map_name")]
    pub map_name: String,
    /// Moves slip: the intended direction with probability `success_rate`, each perpendicular one
    /// with `(1 - success_rate) / 2`.
    #[serde(default = "yes")]
    pub is_slippery: bool,
    /// Probability that a slippery move goes where intended.
    #[serde(default = "default_success_rate")]
    pub success_rate: f64,
    /// Rewards for entering a goal, a hole and a frozen (or start) tile.
    #[serde(default = "default_reward_schedule")]
    pub reward_schedule: [f64; 3],
    /// Subtracted from the reward for falling into a hole (lab 003's `PunishTerminationWrapper`
    /// uses 1: every episode that ends without the goal pays -1).
    #[serde(default)]
    pub hole_penalty: f64,
    /// `index` (an integer, for tabular agents) or `one_hot` (a float vector, for DQN).
    #[serde(default)]
    pub observation: FrozenLakeObs,
}

fn default_map_name() -> String {
    "4x4".to_string()
}
fn yes() -> bool {
    true
}
fn default_success_rate() -> f64 {
    1.0 / 3.0
}
fn default_reward_schedule() -> [f64; 3] {
    [1.0, 0.0, 0.0]
}

impl Default for FrozenLakeConfig {
    fn default() -> Self {
        FrozenLakeConfig {
            map: None,
            map_name: default_map_name(),
            is_slippery: true,
            success_rate: default_success_rate(),
            reward_schedule: default_reward_schedule(),
            hole_penalty: 0.0,
            observation: FrozenLakeObs::Index,
        }
    }
}

impl FrozenLakeConfig {
    /// The map's rows: `map` if given, else the preset named by `map_name`.
    pub fn rows(&self) -> Result<Vec<String>, InputError> {
        let rows: Vec<String> = match (&self.map, self.map_name.as_str()) {
            (Some(map), _) => map.clone(),
            (None, "4x4") => MAP_4X4.iter().map(|r| r.to_string()).collect(),
            (None, "8x8") => MAP_8X8.iter().map(|r| r.to_string()).collect(),
            (None, other) => {
                return Err(InputError::new(format!("FrozenLake map_name `{other}` is not one of: 4x4, 8x8")))
            }
        };
        let ncol = rows.first().map_or(0, |r| r.len());
        if ncol == 0 || rows.iter().any(|r| r.len() != ncol) {
            return Err(InputError::new(format!("FrozenLake map {rows:?} must be non-empty rows of equal length")));
        }
        if let Some(bad) = rows.iter().flat_map(|r| r.chars()).find(|c| !"SFHG".contains(*c)) {
            return Err(InputError::new(format!(
                "FrozenLake map {rows:?} has tile `{bad}`; tiles are S (start), F (frozen), H (hole), G (goal)"
            )));
        }
        if !rows.iter().any(|r| r.contains('S')) {
            return Err(InputError::new(format!("FrozenLake map {rows:?} has no start tile S")));
        }
        Ok(rows)
    }

    /// Checks the map and the probabilities.
    pub fn validate(&self) -> Result<(), InputError> {
        self.rows()?;
        if !(0.0..=1.0).contains(&self.success_rate) {
            return Err(InputError::new(format!("FrozenLake success_rate {} must be in [0, 1]", self.success_rate)));
        }
        Ok(())
    }
}

/// One outcome of a state-action pair, as a tuple of Gymnasium's `P[s][a]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    /// Probability of this outcome.
    pub prob: f64,
    /// The state reached.
    pub next_state: usize,
    /// The reward received.
    pub reward: f64,
    /// Whether the episode ends (hole or goal).
    pub terminated: bool,
}

/// A frozen lake; wrap it in [`super::TimeLimit`] for the registered limits (100 steps for
/// `FrozenLake-v1`, 200 for `FrozenLake8x8-v1`).
#[derive(Clone, Debug)]
pub struct FrozenLake {
    config: FrozenLakeConfig,
    tiles: Vec<u8>,
    nrow: usize,
    ncol: usize,
    /// `P[s][a]` flattened at `s * 4 + a`: Gymnasium lists 1 outcome (not slippery, or a
    /// terminal state) or 3 (slippery: left-turn, intended, right-turn).
    table: Vec<Vec<Transition>>,
    starts: Vec<usize>,
    state: usize,
    one_hot: Vec<f32>,
    rng: StdRng,
    canvas: Option<Canvas>,
}

impl FrozenLake {
    /// Builds the lake and its transition table; fails on an invalid map or probability.
    pub fn new(config: FrozenLakeConfig) -> Result<Self, InputError> {
        config.validate()?;
        let rows = config.rows()?;
        let (nrow, ncol) = (rows.len(), rows[0].len());
        let tiles: Vec<u8> = rows.iter().flat_map(|r| r.bytes()).collect();
        let mut lake = FrozenLake {
            table: Vec::with_capacity(nrow * ncol * 4),
            starts: (0..tiles.len()).filter(|&s| tiles[s] == b'S').collect(),
            one_hot: vec![0.0; nrow * ncol],
            state: 0,
            tiles,
            nrow,
            ncol,
            config,
            rng: unseeded_rng(),
            canvas: None,
        };
        for s in 0..nrow * ncol {
            for a in 0..4 {
                let outcomes = lake.outcomes(s, a);
                lake.table.push(outcomes);
            }
        }
        Ok(lake)
    }

    fn outcomes(&self, s: usize, a: usize) -> Vec<Transition> {
        if matches!(self.tiles[s], b'G' | b'H') {
            return vec![Transition { prob: 1.0, next_state: s, reward: 0.0, terminated: true }];
        }
        if !self.config.is_slippery {
            return vec![self.move_from(s, a, 1.0)];
        }
        let fail_rate = (1.0 - self.config.success_rate) / 2.0;
        [(a + 3) % 4, a, (a + 1) % 4]
            .iter()
            .map(|&b| self.move_from(s, b, if b == a { self.config.success_rate } else { fail_rate }))
            .collect()
    }

    fn move_from(&self, s: usize, a: usize, prob: f64) -> Transition {
        let (mut row, mut col) = (s / self.ncol, s % self.ncol);
        match a {
            LEFT => col = col.saturating_sub(1),
            DOWN => row = (row + 1).min(self.nrow - 1),
            RIGHT => col = (col + 1).min(self.ncol - 1),
            UP => row = row.saturating_sub(1),
            _ => unreachable!("FrozenLake has 4 actions"),
        }
        let next_state = row * self.ncol + col;
        let [goal, hole, frozen] = self.config.reward_schedule;
        let (reward, terminated) = match self.tiles[next_state] {
            b'G' => (goal, true),
            b'H' => (hole - self.config.hole_penalty, true),
            _ => (frozen, false),
        };
        Transition { prob, next_state, reward, terminated }
    }

    /// Gymnasium's `P[s][a]`: the possible outcomes of `a` in `s`.
    pub fn transitions(&self, s: usize, a: usize) -> &[Transition] {
        &self.table[s * 4 + a]
    }

    /// Rows and columns of the map.
    pub fn shape(&self) -> (usize, usize) {
        (self.nrow, self.ncol)
    }

    /// The current state index.
    pub fn state(&self) -> usize {
        self.state
    }

    /// Puts the agent on state `s`.
    pub fn set_state(&mut self, s: usize) {
        assert!(s < self.tiles.len(), "state {s} outside the {}x{} map", self.nrow, self.ncol);
        self.state = s;
    }

    fn observe(&mut self) -> Obs<'_> {
        match self.config.observation {
            FrozenLakeObs::Index => Obs::Index(self.state),
            FrozenLakeObs::OneHot => {
                self.one_hot.fill(0.0);
                self.one_hot[self.state] = 1.0;
                Obs::F32(&self.one_hot)
            }
        }
    }
}

impl Env for FrozenLake {
    fn observation_space(&self) -> ObsSpace {
        let n = self.nrow * self.ncol;
        match self.config.observation {
            FrozenLakeObs::Index => ObsSpace::Discrete { n },
            FrozenLakeObs::OneHot => ObsSpace::Box { low: vec![0.0; n], high: vec![1.0; n] },
        }
    }

    fn action_space(&self) -> ActionSpace {
        ActionSpace { n: 4 }
    }

    fn reset(&mut self, seed: Option<u64>) -> Obs<'_> {
        reseed(&mut self.rng, seed);
        // Gymnasium's initial distribution is uniform over the S tiles.
        self.state = self.starts[self.rng.random_range(0..self.starts.len())];
        self.observe()
    }

    fn step(&mut self, action: usize) -> Step<'_> {
        assert!(action < 4, "FrozenLake action {action} out of range 0..4");
        let outcomes = &self.table[self.state * 4 + action];
        // Gymnasium's `categorical_sample`: the first outcome whose cumulative probability
        // exceeds a uniform draw.
        let u: f64 = self.rng.random();
        let mut cumulative = 0.0;
        let mut chosen = outcomes[outcomes.len() - 1];
        for t in outcomes {
            cumulative += t.prob;
            if cumulative > u {
                chosen = *t;
                break;
            }
        }
        self.state = chosen.next_state;
        Step { obs: self.observe(), reward: chosen.reward, terminated: chosen.terminated, truncated: false }
    }

    fn render(&mut self) -> Frame<'_> {
        // Gymnasium's layout: 64-pixel cells, the window capped at 512 pixels a side.
        let width = (64 * self.ncol).min(512);
        let height = (64 * self.nrow).min(512);
        let (cw, ch) = (width / self.ncol, height / self.nrow);
        let canvas = self.canvas.get_or_insert_with(|| Canvas::new(width, height));
        canvas.fill(Color::rgb(255, 255, 255));
        let ice = Color::rgb(204, 230, 255);
        for (s, &tile) in self.tiles.iter().enumerate() {
            let (x0, y0) = ((s % self.ncol) * cw, (s / self.ncol) * ch);
            // A one-pixel white gap between cells draws the grid.
            canvas.fill_rect(x0 + 1, y0 + 1, x0 + cw - 1, y0 + ch - 1, ice);
            let (cx, cy) = (x0 as f64 + cw as f64 / 2.0, y0 as f64 + ch as f64 / 2.0);
            let r = cw.min(ch) as f64;
            match tile {
                b'H' => canvas.fill_circle(cx, cy, 0.38 * r, Color::rgb(24, 54, 105)),
                b'G' => {
                    canvas.fill_rect(
                        x0 + cw / 3,
                        y0 + ch / 5,
                        x0 + cw / 3 + 3,
                        y0 + 4 * ch / 5,
                        Color::rgb(90, 60, 30),
                    );
                    let flag = [
                        (x0 as f64 + cw as f64 / 3.0 + 3.0, y0 as f64 + ch as f64 / 5.0),
                        (x0 as f64 + 0.8 * cw as f64, y0 as f64 + 0.32 * ch as f64),
                        (x0 as f64 + cw as f64 / 3.0 + 3.0, y0 as f64 + 0.45 * ch as f64),
                    ];
                    canvas.fill_polygon(&flag, Color::rgb(230, 180, 20));
                }
                b'S' => canvas.fill_rect(x0 + 4, y0 + 4, x0 + cw - 4, y0 + 8, Color::rgb(120, 170, 220)),
                _ => {}
            }
        }
        let s = self.state;
        let (cx, cy) =
            (((s % self.ncol) * cw) as f64 + cw as f64 / 2.0, ((s / self.ncol) * ch) as f64 + ch as f64 / 2.0);
        let r = cw.min(ch) as f64;
        canvas.fill_circle(cx, cy, 0.3 * r, Color::rgb(200, 40, 40));
        canvas.fill_circle(cx, cy - 0.3 * r, 0.17 * r, Color::rgb(240, 200, 160));
        canvas.frame()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slippery_moves_split_probability_around_the_intended_direction() {
        let lake = FrozenLake::new(FrozenLakeConfig::default()).unwrap();
        let p = lake.transitions(0, RIGHT);
        let next: Vec<usize> = p.iter().map(|t| t.next_state).collect();
        assert_eq!(next, vec![4, 1, 0]);
        assert!((p.iter().map(|t| t.prob).sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(
            lake.transitions(5, LEFT),
            &[Transition { prob: 1.0, next_state: 5, reward: 0.0, terminated: true }]
        );
    }

    #[test]
    fn hole_penalty_and_one_hot_observation() {
        let config = FrozenLakeConfig {
            map: Some(vec!["SH".into(), "FG".into()]),
            is_slippery: false,
            hole_penalty: 1.0,
            observation: FrozenLakeObs::OneHot,
            ..FrozenLakeConfig::default()
        };
        let mut lake = FrozenLake::new(config).unwrap();
        assert_eq!(lake.reset(Some(0)), Obs::F32(&[1.0, 0.0, 0.0, 0.0]));
        let step = lake.step(RIGHT);
        assert_eq!((step.obs, step.reward, step.terminated), (Obs::F32(&[0.0, 1.0, 0.0, 0.0]), -1.0, true));
        lake.reset(None);
        lake.step(DOWN);
        let step = lake.step(RIGHT);
        assert_eq!((step.reward, step.terminated), (1.0, true));
    }

    #[test]
    fn bad_maps_are_input_errors() {
        for map in [vec![], vec!["SF".to_string(), "F".to_string()], vec!["SX".to_string()], vec!["FF".to_string()]] {
            let config = FrozenLakeConfig { map: Some(map), ..FrozenLakeConfig::default() };
            assert!(FrozenLake::new(config).is_err());
        }
    }
}
