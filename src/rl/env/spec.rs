//! [`EnvSpec`]: the `env:` section of a trainer config, a Gymnasium id plus that id's options,
//! e.g. `{id: FrozenLake-v1, map: [SFFF, FFFF, HHFF, HHFG], is_slippery: true}`.
//!
//! Options are checked against the id (each id's options struct denies unknown fields) when the
//! spec is parsed, so a typo fails before any training starts. Defaults depend on the id
//! (`FrozenLake8x8-v1` uses the 8x8 map, `ALE/*-v5` sticky actions), so parsing overlays the
//! user's keys on the id's defaults before deserialising.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

#[cfg(feature = "atari")]
use super::atari::{self, AtariConfig};
use super::{
    Acrobot, AcrobotConfig, CartPole, CartPoleConfig, Env, FrozenLake, FrozenLakeConfig, MountainCar,
    MountainCarConfig, TimeLimit,
};
use crate::error::InputError;

/// Classic ids, in the order error messages list them.
const CLASSIC_IDS: [&str; 6] =
    ["CartPole-v0", "CartPole-v1", "FrozenLake-v1", "FrozenLake8x8-v1", "Acrobot-v1", "MountainCar-v0"];

/// The most environment copies one run may step together.
pub const MAX_NUM_ENVS: u64 = 4096;

/// A Gymnasium id with its options, parsed and checked; [`EnvSpec::make`] builds the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct EnvSpec {
    /// The Gymnasium id, e.g. `CartPole-v1` or `ALE/Breakout-v5`.
    pub id: String,
    /// Overrides the step limit registered with the id (Gymnasium's `max_episode_steps`).
    pub max_episode_steps: Option<u32>,
    /// Copies stepped together while training (Gymnasium's `make_vec(id, num_envs)`): copy `i`
    /// is seeded `seed + i`, resets itself when its episode ends and feeds the one replay
    /// buffer. Evaluation always runs one copy.
    pub num_envs: u32,
    /// The id's options with its defaults filled in.
    pub options: EnvOptions,
}

/// The options of each family of environments.
#[derive(Clone, Debug, PartialEq)]
pub enum EnvOptions {
    /// `CartPole-v0`, `CartPole-v1`.
    CartPole(CartPoleConfig),
    /// `FrozenLake-v1`, `FrozenLake8x8-v1`.
    FrozenLake(FrozenLakeConfig),
    /// `Acrobot-v1`.
    Acrobot(AcrobotConfig),
    /// `MountainCar-v0`.
    MountainCar(MountainCarConfig),
    /// `ALE/<Game>-v5`, `<Game>NoFrameskip-v4`.
    #[cfg(feature = "atari")]
    Atari {
        /// The game, as in the id (`Breakout`).
        game: String,
        /// Emulator settings and preprocessing.
        config: AtariConfig,
    },
}

fn known_ids() -> String {
    let mut known = CLASSIC_IDS.join(", ");
    #[cfg(feature = "atari")]
    known.push_str(&format!(
        ", and ALE/<Game>-v5 or <Game>NoFrameskip-v4 for the bundled games: {}",
        atari::GAMES.join(", ")
    ));
    #[cfg(not(feature = "atari"))]
    known.push_str(" (Atari ids need the `atari` cargo feature)");
    known
}

fn parse_options<T: for<'de> Deserialize<'de> + Serialize>(
    id: &str,
    defaults: T,
    user: Map<String, Value>,
) -> Result<T, InputError> {
    let Value::Object(mut merged) = serde_json::to_value(defaults).expect("options serialise to a map") else {
        unreachable!("options structs serialise to JSON objects")
    };
    merged.extend(user);
    serde_json::from_value(Value::Object(merged)).map_err(|e| InputError::new(format!("env `{id}`: {e}")))
}

impl EnvSpec {
    /// The spec of `id` with default options.
    pub fn new(id: &str) -> Result<Self, InputError> {
        let mut map = Map::new();
        map.insert("id".into(), Value::String(id.into()));
        EnvSpec::from_map(map)
    }

    /// Parses `{id: ..., max_episode_steps: ..., <options>}`.
    pub fn from_map(mut map: Map<String, Value>) -> Result<Self, InputError> {
        let id = match map.remove("id") {
            Some(Value::String(id)) => id,
            Some(other) => return Err(InputError::new(format!("env id must be a string, got {other}"))),
            None => return Err(InputError::new(format!("env needs an `id`; known ids: {}", known_ids()))),
        };
        let max_episode_steps = match map.remove("max_episode_steps") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().filter(|&n| n > 0 && n <= u32::MAX as u64).ok_or_else(|| {
                InputError::new(format!("env `{id}`: max_episode_steps must be a positive integer, got {v}"))
            })? as u32),
        };
        let num_envs = match map.remove("num_envs") {
            None | Some(Value::Null) => 1,
            Some(v) => v.as_u64().filter(|&n| (1..=MAX_NUM_ENVS).contains(&n)).ok_or_else(|| {
                InputError::new(format!("env `{id}`: num_envs must be an integer from 1 to {MAX_NUM_ENVS}, got {v}"))
            })? as u32,
        };
        let options = match id.as_str() {
            "CartPole-v0" | "CartPole-v1" => EnvOptions::CartPole(parse_options(&id, CartPoleConfig::default(), map)?),
            "FrozenLake-v1" | "FrozenLake8x8-v1" => {
                let mut defaults = FrozenLakeConfig::default();
                if id == "FrozenLake8x8-v1" {
                    defaults.map_name = "8x8".into();
                }
                let config = parse_options(&id, defaults, map)?;
                config.validate().map_err(|e| InputError::new(format!("env `{id}`: {e}")))?;
                EnvOptions::FrozenLake(config)
            }
            "Acrobot-v1" => EnvOptions::Acrobot(parse_options(&id, AcrobotConfig::default(), map)?),
            "MountainCar-v0" => EnvOptions::MountainCar(parse_options(&id, MountainCarConfig::default(), map)?),
            _ => EnvSpec::atari_options(&id, map)?,
        };
        Ok(EnvSpec { id, max_episode_steps, num_envs, options })
    }

    #[cfg(feature = "atari")]
    fn atari_options(id: &str, map: Map<String, Value>) -> Result<EnvOptions, InputError> {
        let Some((game, defaults)) = atari::parse_id(id) else {
            return Err(InputError::new(format!("unknown env id `{id}`; known ids: {}", known_ids())));
        };
        let config: AtariConfig = parse_options(id, defaults, map)?;
        config.validate().map_err(|e| InputError::new(format!("env `{id}`: {e}")))?;
        Ok(EnvOptions::Atari { game, config })
    }

    #[cfg(not(feature = "atari"))]
    fn atari_options(id: &str, _map: Map<String, Value>) -> Result<EnvOptions, InputError> {
        Err(InputError::new(format!("unknown env id `{id}`; known ids: {}", known_ids())))
    }

    /// The step limit: `max_episode_steps` if set, else the one Gymnasium registers with the id
    /// (`None` for Atari, whose episodes are capped in emulator frames instead).
    pub fn max_episode_steps(&self) -> Option<u32> {
        self.max_episode_steps.or(match self.id.as_str() {
            "CartPole-v0" => Some(200),
            "CartPole-v1" | "Acrobot-v1" => Some(500),
            "FrozenLake-v1" => Some(100),
            "FrozenLake8x8-v1" | "MountainCar-v0" => Some(200),
            _ => None,
        })
    }

    /// Gymnasium's `reward_threshold` for the id, where it registers one.
    pub fn reward_threshold(&self) -> Option<f64> {
        match self.id.as_str() {
            "CartPole-v0" => Some(195.0),
            "CartPole-v1" => Some(475.0),
            "FrozenLake-v1" => Some(0.70),
            "FrozenLake8x8-v1" => Some(0.85),
            "Acrobot-v1" => Some(-100.0),
            "MountainCar-v0" => Some(-110.0),
            _ => None,
        }
    }

    /// Builds the environment with its time limit. Atari environments are not `Send`: build
    /// them in the thread that steps them.
    pub fn make(&self) -> anyhow::Result<Box<dyn Env>> {
        fn limited<E: Env + 'static>(env: E, limit: Option<u32>) -> Box<dyn Env> {
            match limit {
                Some(n) => Box::new(TimeLimit::new(env, n)),
                None => Box::new(env),
            }
        }
        let limit = self.max_episode_steps();
        Ok(match &self.options {
            EnvOptions::CartPole(c) => limited(CartPole::new(c.clone()), limit),
            EnvOptions::FrozenLake(c) => limited(FrozenLake::new(c.clone())?, limit),
            EnvOptions::Acrobot(c) => limited(Acrobot::new(c.clone()), limit),
            EnvOptions::MountainCar(c) => limited(MountainCar::new(c.clone()), limit),
            #[cfg(feature = "atari")]
            EnvOptions::Atari { game, config } => limited(atari::AtariEnv::new(game, config.clone())?, limit),
        })
    }

    /// The spec as `{id, max_episode_steps?, <every option>}`.
    pub fn to_map(&self) -> Map<String, Value> {
        let options = match &self.options {
            EnvOptions::CartPole(c) => serde_json::to_value(c),
            EnvOptions::FrozenLake(c) => serde_json::to_value(c),
            EnvOptions::Acrobot(c) => serde_json::to_value(c),
            EnvOptions::MountainCar(c) => serde_json::to_value(c),
            #[cfg(feature = "atari")]
            EnvOptions::Atari { config, .. } => serde_json::to_value(config),
        };
        let mut map = Map::new();
        map.insert("id".into(), Value::String(self.id.clone()));
        if let Some(n) = self.max_episode_steps {
            map.insert("max_episode_steps".into(), n.into());
        }
        if self.num_envs != 1 {
            map.insert("num_envs".into(), self.num_envs.into());
        }
        if let Ok(Value::Object(options)) = options {
            map.extend(options);
        }
        map
    }
}

impl<'de> Deserialize<'de> for EnvSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = Map::<String, Value>::deserialize(deserializer)?;
        EnvSpec::from_map(map).map_err(D::Error::custom)
    }
}

impl Serialize for EnvSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_map().serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<EnvSpec, String> {
        serde_norway::from_str::<EnvSpec>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_ids_with_options_and_id_dependent_defaults() {
        let spec = parse("{id: FrozenLake-v1, map: [SFFF, FFFF, HHFF, HHFG], is_slippery: true}").unwrap();
        let EnvOptions::FrozenLake(c) = &spec.options else { panic!("{spec:?}") };
        assert_eq!(c.map.as_ref().unwrap()[2], "HHFF");
        assert_eq!(spec.max_episode_steps(), Some(100));
        let spec = parse("{id: FrozenLake8x8-v1, is_slippery: false}").unwrap();
        let EnvOptions::FrozenLake(c) = &spec.options else { panic!("{spec:?}") };
        assert_eq!((c.map_name.as_str(), c.is_slippery), ("8x8", false));
        assert_eq!(spec.max_episode_steps(), Some(200));
        let spec = parse("{id: CartPole-v1, max_episode_steps: 1000}").unwrap();
        assert_eq!((spec.max_episode_steps(), spec.num_envs), (Some(1000), 1));
        let spec = parse("{id: CartPole-v1, num_envs: 8}").unwrap();
        assert_eq!(spec.num_envs, 8);
        assert_eq!(parse(&serde_norway::to_string(&spec).unwrap()).unwrap(), spec);
        for bad in ["0", "-1", "2.5", "'4'", "5000"] {
            let err = parse(&format!("{{id: CartPole-v1, num_envs: {bad}}}")).unwrap_err();
            assert!(err.contains("num_envs must be an integer from 1 to 4096"), "{bad}: {err}");
        }
    }

    #[test]
    fn round_trips_through_serde() {
        let spec = parse("{id: CartPole-v0, sutton_barto_reward: true}").unwrap();
        let yaml = serde_norway::to_string(&spec).unwrap();
        assert_eq!(parse(&yaml).unwrap(), spec);
    }

    #[test]
    fn unknown_ids_and_options_say_what_is_known() {
        let err = parse("{id: CartPole-v7}").unwrap_err();
        assert!(err.contains("unknown env id `CartPole-v7`") && err.contains("MountainCar-v0"), "{err}");
        let err = parse("{id: CartPole-v1, slippery: true}").unwrap_err();
        assert!(err.contains("unknown field `slippery`") && err.contains("sutton_barto_reward"), "{err}");
        let err = parse("{id: FrozenLake-v1, map: [SFX]}").unwrap_err();
        assert!(err.contains("tile `X`"), "{err}");
        assert!(parse("{is_slippery: true}").unwrap_err().contains("needs an `id`"));
    }

    #[test]
    fn makes_environments_with_their_limits() {
        for id in CLASSIC_IDS {
            let mut env = EnvSpec::new(id).unwrap().make().unwrap();
            env.reset(Some(1));
            let mut steps = 0;
            while !env.step(0).done() {
                steps += 1;
                assert!(steps < 1000, "{id} never ends");
            }
        }
    }
}
