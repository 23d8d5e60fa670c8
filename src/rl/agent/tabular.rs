//! Tabular Q-learning (Watkins 1989) and SARSA (Rummery & Niranjan 1994) for discrete
//! observations (FrozenLake), as lab 003 builds them:
//!
//! - Q-learning: `Q(s, a) += alpha (r + gamma max_a' Q(s', a') - Q(s, a))`;
//! - SARSA: `Q(s, a) += alpha (r + gamma Q(s', a') - Q(s, a))` with `a'` the action the policy
//!   then takes in `s'`;
//!
//! and no bootstrap when the episode terminated. Exploration is epsilon-greedy (any schedule),
//! UCB (`argmax_a Q(s, a) + c sqrt(ln N(s) / N(s, a))`, untried actions first) or greedy on
//! optimistic initial values (`initial_value > 0` with `exploration: {type: constant, epsilon: 0}`).

use std::path::Path;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{argmax, Agent, Exploration, Progress, Transition};
use crate::error::InputError;
use crate::rl::env::{ActionSpace, Obs, ObsSpace};

/// The `agent: {type: q_learning | sarsa, ...}` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TabularConfig {
    /// Step size.
    pub alpha: f64,
    /// Discount factor.
    pub gamma: f64,
    /// Every `Q(s, a)` at the start (optimistic when above the returns to expect).
    pub initial_value: f64,
    /// Epsilon schedule, or UCB.
    pub exploration: Exploration,
}

impl Default for TabularConfig {
    fn default() -> Self {
        TabularConfig {
            alpha: 0.1,
            gamma: 0.99,
            initial_value: 0.0,
            exploration: Exploration::Constant { epsilon: 0.1 },
        }
    }
}

impl TabularConfig {
    /// Checks ranges and that the observations are discrete.
    pub fn validate(&self, space: &ObsSpace) -> Result<(), String> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(format!("alpha must be in (0, 1], got {}", self.alpha));
        }
        if !(0.0..=1.0).contains(&self.gamma) {
            return Err(format!("gamma must be in [0, 1], got {}", self.gamma));
        }
        if !self.initial_value.is_finite() {
            return Err(format!("initial_value must be finite, got {}", self.initial_value));
        }
        match space {
            ObsSpace::Discrete { .. } => Ok(()),
            other => Err(format!(
                "tabular agents need discrete observations (e.g. FrozenLake with the default `obs: index`), got shape {:?}; use agent.type dqn",
                other.shape()
            )),
        }
    }
}

/// Which bootstrap the update uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TabularKind {
    /// `max_a' Q(s', a')`.
    QLearning,
    /// `Q(s', a')`, `a'` the next action taken.
    Sarsa,
}

/// A Q-table agent.
#[derive(Clone, Debug)]
pub struct TabularAgent {
    cfg: TabularConfig,
    kind: TabularKind,
    n_actions: usize,
    /// `Q[s * n_actions + a]`.
    q: Vec<f64>,
    /// Visits of each state, and of each state-action pair (UCB).
    state_visits: Vec<u64>,
    pair_visits: Vec<u64>,
    /// SARSA's next action, chosen when learning from the previous transition: `(state, action)`.
    pending: Option<(usize, usize)>,
    /// The epsilon the loop passed last (SARSA picks `a'` with it).
    epsilon: f64,
    scratch: Vec<f32>,
}

fn index(obs: Obs<'_>) -> usize {
    match obs {
        Obs::Index(i) => i,
        _ => panic!("tabular agents take discrete observations (checked when the config is validated)"),
    }
}

impl TabularAgent {
    /// A table for `space` (discrete) and `actions`.
    pub fn new(
        cfg: &TabularConfig,
        kind: TabularKind,
        space: &ObsSpace,
        actions: ActionSpace,
    ) -> Result<Self, InputError> {
        cfg.validate(space).map_err(InputError::new)?;
        let ObsSpace::Discrete { n } = *space else { unreachable!("validated") };
        Ok(TabularAgent {
            cfg: cfg.clone(),
            kind,
            n_actions: actions.n,
            q: vec![cfg.initial_value; n * actions.n],
            state_visits: vec![0; n],
            pair_visits: vec![0; n * actions.n],
            pending: None,
            epsilon: 0.0,
            scratch: vec![0.0; actions.n],
        })
    }

    /// `Q(s, .)`.
    pub fn q_values(&self, s: usize) -> &[f64] {
        &self.q[s * self.n_actions..(s + 1) * self.n_actions]
    }

    fn greedy(&mut self, s: usize) -> usize {
        let row = &self.q[s * self.n_actions..(s + 1) * self.n_actions];
        for (dst, &v) in self.scratch.iter_mut().zip(row) {
            *dst = v as f32;
        }
        argmax(&self.scratch)
    }

    /// The training policy's action in `s`, counting the visit.
    fn choose(&mut self, s: usize, epsilon: f64, rng: &mut StdRng) -> usize {
        let a = match self.cfg.exploration {
            Exploration::Ucb { c } => {
                let n = self.n_actions;
                let visits = &self.pair_visits[s * n..(s + 1) * n];
                match visits.iter().position(|&v| v == 0) {
                    Some(untried) => untried,
                    None => {
                        let ln_ns = (self.state_visits[s] as f64).ln();
                        for a in 0..n {
                            self.scratch[a] = (self.q[s * n + a] + c * (ln_ns / visits[a] as f64).sqrt()) as f32;
                        }
                        argmax(&self.scratch)
                    }
                }
            }
            _ if rng.random::<f64>() < epsilon => rng.random_range(0..self.n_actions),
            _ => self.greedy(s),
        };
        self.state_visits[s] += 1;
        self.pair_visits[s * self.n_actions + a] += 1;
        a
    }
}

#[derive(Serialize, Deserialize)]
struct SavedTable {
    states: usize,
    actions: usize,
    q: Vec<Vec<f64>>,
}

impl Agent for TabularAgent {
    fn act(&mut self, obs: Obs<'_>, epsilon: f64, rng: &mut StdRng) -> usize {
        let s = index(obs);
        self.epsilon = epsilon;
        match self.pending.take() {
            Some((state, action)) if state == s => action,
            _ => self.choose(s, epsilon, rng),
        }
    }

    fn act_eval(&mut self, obs: Obs<'_>, epsilon: f64, rng: &mut StdRng) -> usize {
        if rng.random::<f64>() < epsilon {
            rng.random_range(0..self.n_actions)
        } else {
            self.greedy(index(obs))
        }
    }

    fn observe(&mut self, t: Transition<'_>, _p: Progress, rng: &mut StdRng) -> anyhow::Result<()> {
        let (s, s2, n) = (index(t.obs), index(t.next_obs), self.n_actions);
        let done = t.terminated || t.truncated;
        let bootstrap = if t.terminated {
            0.0
        } else {
            match self.kind {
                TabularKind::QLearning => self.q_values(s2).iter().copied().fold(f64::NEG_INFINITY, f64::max),
                TabularKind::Sarsa => {
                    let a2 = self.choose(s2, self.epsilon, rng);
                    if !done {
                        self.pending = Some((s2, a2));
                    }
                    self.q[s2 * n + a2]
                }
            }
        };
        let target = t.reward as f64 + self.cfg.gamma * bootstrap;
        let q = &mut self.q[s * n + t.action];
        *q += self.cfg.alpha * (target - *q);
        if done {
            self.pending = None;
        }
        Ok(())
    }

    fn take_mean_loss(&mut self) -> anyhow::Result<Option<f64>> {
        Ok(None)
    }

    fn learning_rate(&self) -> Option<f64> {
        Some(self.cfg.alpha)
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let saved = SavedTable {
            states: self.state_visits.len(),
            actions: self.n_actions,
            q: self.q.chunks(self.n_actions).map(<[f64]>::to_vec).collect(),
        };
        std::fs::write(path, serde_json::to_string_pretty(&saved)?)
            .with_context(|| format!("cannot write the Q-table to {}", path.display()))
    }

    fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let saved: SavedTable =
            serde_json::from_str(&text).with_context(|| format!("{} is not a Q-table", path.display()))?;
        if saved.states != self.state_visits.len() || saved.actions != self.n_actions {
            anyhow::bail!(
                "{} holds a {}x{} Q-table; this environment needs {}x{}",
                path.display(),
                saved.states,
                saved.actions,
                self.state_visits.len(),
                self.n_actions
            );
        }
        self.q = saved.q.concat();
        Ok(())
    }

    fn weights_file(&self) -> &'static str {
        "q_table.json"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn agent(kind: TabularKind, cfg: TabularConfig) -> TabularAgent {
        TabularAgent::new(&cfg, kind, &ObsSpace::Discrete { n: 3 }, ActionSpace { n: 2 }).unwrap()
    }

    fn step(s: usize, a: usize, r: f32, s2: usize, terminated: bool) -> Transition<'static> {
        Transition {
            obs: Obs::Index(s),
            action: a,
            reward: r,
            next_obs: Obs::Index(s2),
            terminated,
            truncated: false,
            env: 0,
        }
    }

    #[test]
    fn q_learning_and_sarsa_targets() {
        let cfg = TabularConfig { alpha: 0.5, gamma: 0.9, ..Default::default() };
        let mut rng = StdRng::seed_from_u64(0);
        let mut q = agent(TabularKind::QLearning, cfg.clone());
        q.q = vec![0.0, 0.0, 1.0, 3.0, 0.0, 0.0];
        q.observe(step(0, 1, 1.0, 1, false), Progress::default(), &mut rng).unwrap();
        // 0 + 0.5 * (1 + 0.9 * max(1, 3) - 0) = 1.85
        assert!((q.q_values(0)[1] - 1.85).abs() < 1e-12);
        q.observe(step(2, 0, 1.0, 1, true), Progress::default(), &mut rng).unwrap();
        assert!((q.q_values(2)[0] - 0.5).abs() < 1e-12, "no bootstrap after termination");

        // SARSA, greedy: a' = argmax Q(1, .) = 1, value 3; with epsilon 1 it could be either.
        let mut s =
            agent(TabularKind::Sarsa, TabularConfig { exploration: Exploration::Constant { epsilon: 0.0 }, ..cfg });
        s.q = vec![0.0, 0.0, 1.0, 3.0, 0.0, 0.0];
        let a0 = s.act(Obs::Index(0), 0.0, &mut rng);
        s.observe(step(0, a0, 1.0, 1, false), Progress::default(), &mut rng).unwrap();
        assert!((s.q_values(0)[0] - 1.85).abs() < 1e-12);
        // The action SARSA bootstrapped from is the one it takes next.
        assert_eq!(s.pending, Some((1, 1)));
        assert_eq!(s.act(Obs::Index(1), 0.0, &mut rng), 1);
    }

    #[test]
    fn sarsa_bootstraps_from_the_action_it_then_takes() {
        let cfg = TabularConfig { alpha: 1.0, gamma: 1.0, ..Default::default() };
        let mut s = agent(TabularKind::Sarsa, cfg);
        s.q = vec![0.0, 0.0, 1.0, 3.0, 0.0, 0.0];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..50 {
            s.q[2] = 1.0;
            s.q[3] = 3.0;
            let a = s.act(Obs::Index(0), 1.0, &mut rng);
            s.observe(step(0, a, 0.0, 1, false), Progress::default(), &mut rng).unwrap();
            let next = s.act(Obs::Index(1), 1.0, &mut rng);
            // alpha = gamma = 1: Q(0, a) = Q(1, a') exactly.
            assert_eq!(s.q_values(0)[a], [1.0, 3.0][next]);
            s.observe(step(1, next, 0.0, 2, true), Progress::default(), &mut rng).unwrap();
        }
    }

    #[test]
    fn ucb_tries_every_action_then_adds_the_bonus() {
        let cfg = TabularConfig { exploration: Exploration::Ucb { c: 1.0 }, ..Default::default() };
        let mut u = agent(TabularKind::QLearning, cfg);
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(u.act(Obs::Index(0), 0.0, &mut rng), 0);
        assert_eq!(u.act(Obs::Index(0), 0.0, &mut rng), 1);
        // N(s) = 2, N(s, .) = 1: bonus sqrt(ln 2) for both; Q breaks the tie.
        u.q[0] = 0.1;
        assert_eq!(u.act(Obs::Index(0), 0.0, &mut rng), 0);
        // Now N(s, 0) = 2: Q(0) + sqrt(ln 3 / 2) = 0.84 < Q(1) + sqrt(ln 3) = 1.05.
        assert_eq!(u.act(Obs::Index(0), 0.0, &mut rng), 1);
    }

    #[test]
    fn optimistic_values_and_validation() {
        let cfg = TabularConfig { initial_value: 1.0, ..Default::default() };
        assert!(agent(TabularKind::QLearning, cfg).q.iter().all(|&v| v == 1.0));
        let bad = TabularConfig { alpha: 0.0, ..Default::default() };
        assert!(
            TabularAgent::new(&bad, TabularKind::Sarsa, &ObsSpace::Discrete { n: 2 }, ActionSpace { n: 2 }).is_err()
        );
        let err = TabularConfig::default().validate(&ObsSpace::Box { low: vec![0.0], high: vec![1.0] }).unwrap_err();
        assert!(err.contains("discrete observations"), "{err}");
    }

    #[test]
    fn save_and_load_round_trip() {
        let mut a = agent(TabularKind::QLearning, TabularConfig::default());
        a.q = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(a.weights_file());
        a.save(&path).unwrap();
        let mut b = agent(TabularKind::QLearning, TabularConfig::default());
        b.load(&path).unwrap();
        assert_eq!(b.q, a.q);
    }
}
