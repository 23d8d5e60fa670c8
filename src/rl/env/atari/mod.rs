//! Atari 2600 games through the Arcade Learning Environment (Bellemare et al. 2013; ALE 0.6.0 as
//! vendored by the `ale-sys` crate), behind the `atari` cargo feature because ALE is GPL-2.0.
//!
//! Ids follow Gymnasium / ale-py: `ALE/<Game>-v5` (sticky actions 0.25, Machado et al. 2018) and
//! `<Game>NoFrameskip-v4` (deterministic). Both come with the DQN preprocessing stack of Mnih et
//! al. (2015) in SB3's order (`common/atari_wrappers.py`), each step an option: no-op reset,
//! max-and-skip 4, episodic life, fire reset, grayscale, 84x84 area resize, reward sign clipping,
//! a stack of 4 frames, and a cap on emulator frames per episode.
//!
//! One [`AtariEnv`] owns one ALE instance, which is not thread-safe: the type is not `Send`, so
//! each worker thread builds its own environment.

pub mod wrappers;

use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use ale::BundledRom;
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use self::wrappers::{clip_reward, Preprocessor};
use super::{ActionSpace, Env, Frame, Obs, ObsSpace, Step};
use crate::error::InputError;

/// ALE's action number for NOOP and FIRE (the full action set's order).
const NOOP: i32 = 0;
const FIRE: i32 = 1;

/// Options of the Atari ids: emulator settings, then the preprocessing steps in the order they
/// apply. Defaults depend on the id (see [`parse_id`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtariConfig {
    /// Probability that the emulator repeats the previous action instead of the new one, per
    /// frame (sticky actions: 0.25 for v5, 0 for NoFrameskip-v4).
    pub repeat_action_probability: f32,
    /// All 18 joystick actions instead of the game's minimal set.
    pub full_action_space: bool,
    /// Emulator frames per agent step, rewards summed (4).
    pub frame_skip: u32,
    /// Observe the pixel-wise max of the last two skipped frames, which removes sprite flicker.
    pub max_pool: bool,
    /// A real reset plays a uniform 1..=noop_max NOOP frames (30; 0 disables).
    pub noop_max: u32,
    /// Losing a life ends the training episode; only game over resets the game.
    pub episodic_life: bool,
    /// Press FIRE after a reset in games that need it to start (ignored by the others).
    pub fire_reset: bool,
    /// Observe ALE's grayscale screen instead of RGB.
    pub grayscale: bool,
    /// Resize frames to `screen_size x screen_size` with area interpolation (84; null keeps 210x160).
    pub screen_size: Option<usize>,
    /// Replace rewards with their sign.
    pub clip_rewards: bool,
    /// Frames stacked in an observation, oldest first (4; 1 disables).
    pub frame_stack: usize,
    /// Truncate the episode after this many emulator frames (108000 = 30 minutes for v5).
    pub max_frames_per_episode: u32,
}

impl AtariConfig {
    /// The DQN stack with ALE v5's sticky actions and frame cap.
    pub fn v5() -> Self {
        AtariConfig {
            repeat_action_probability: 0.25,
            full_action_space: false,
            frame_skip: 4,
            max_pool: true,
            noop_max: 30,
            episodic_life: true,
            fire_reset: true,
            grayscale: true,
            screen_size: Some(84),
            clip_rewards: true,
            frame_stack: 4,
            max_frames_per_episode: 108_000,
        }
    }

    /// The DQN stack on the deterministic NoFrameskip-v4 emulator (ale-py registers a
    /// 400,000-step limit at one frame per step).
    pub fn no_frameskip_v4() -> Self {
        AtariConfig { repeat_action_probability: 0.0, max_frames_per_episode: 400_000, ..AtariConfig::v5() }
    }

    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), InputError> {
        let fail = |msg: String| Err(InputError::new(msg));
        if !(0.0..=1.0).contains(&self.repeat_action_probability) {
            return fail(format!("repeat_action_probability {} must be in [0, 1]", self.repeat_action_probability));
        }
        if self.frame_skip == 0 {
            return fail("frame_skip must be at least 1".into());
        }
        if self.frame_stack == 0 {
            return fail("frame_stack must be at least 1".into());
        }
        if self.screen_size == Some(0) {
            return fail("screen_size must be positive (or null to keep 210x160)".into());
        }
        if self.max_frames_per_episode == 0 {
            return fail("max_frames_per_episode must be positive".into());
        }
        Ok(())
    }
}

/// The games whose ROMs the `ale` crate bundles, named as in Gymnasium ids.
pub const GAMES: [&str; 62] = [
    "Adventure",
    "AirRaid",
    "Alien",
    "Amidar",
    "Assault",
    "Asterix",
    "Asteroids",
    "Atlantis",
    "BankHeist",
    "BattleZone",
    "BeamRider",
    "Berzerk",
    "Bowling",
    "Boxing",
    "Breakout",
    "Carnival",
    "Centipede",
    "ChopperCommand",
    "CrazyClimber",
    "Defender",
    "DemonAttack",
    "DoubleDunk",
    "ElevatorAction",
    "Enduro",
    "FishingDerby",
    "Freeway",
    "Frostbite",
    "Gopher",
    "Gravitar",
    "Hero",
    "IceHockey",
    "Jamesbond",
    "JourneyEscape",
    "Kaboom",
    "Kangaroo",
    "Krull",
    "KungFuMaster",
    "MontezumaRevenge",
    "MsPacman",
    "NameThisGame",
    "Phoenix",
    "Pitfall",
    "Pong",
    "Pooyan",
    "PrivateEye",
    "Qbert",
    "Riverraid",
    "RoadRunner",
    "Robotank",
    "Seaquest",
    "Skiing",
    "SpaceInvaders",
    "StarGunner",
    "Tennis",
    "TimePilot",
    "Tutankham",
    "UpNDown",
    "Venture",
    "VideoPinball",
    "WizardOfWor",
    "YarsRevenge",
    "Zaxxon",
];

/// The bundled ROM of a game named as in [`GAMES`].
fn bundled_rom(game: &str) -> Option<BundledRom> {
    use BundledRom::*;
    Some(match game {
        "Adventure" => Adventure,
        "AirRaid" => AirRaid,
        "Alien" => Alien,
        "Amidar" => Amidar,
        "Assault" => Assault,
        "Asterix" => Asterix,
        "Asteroids" => Asteroids,
        "Atlantis" => Atlantis,
        "BankHeist" => BankHeist,
        "BattleZone" => BattleZone,
        "BeamRider" => BeamRider,
        "Berzerk" => Berzerk,
        "Bowling" => Bowling,
        "Boxing" => Boxing,
        "Breakout" => Breakout,
        "Carnival" => Carnival,
        "Centipede" => Centipede,
        "ChopperCommand" => ChopperCommand,
        "CrazyClimber" => CrazyClimber,
        "Defender" => Defender,
        "DemonAttack" => DemonAttack,
        "DoubleDunk" => DoubleDunk,
        "ElevatorAction" => ElevatorAction,
        "Enduro" => Enduro,
        "FishingDerby" => FishingDerby,
        "Freeway" => Freeway,
        "Frostbite" => Frostbite,
        "Gopher" => Gopher,
        "Gravitar" => Gravitar,
        "Hero" => Hero,
        "IceHockey" => IceHockey,
        "Jamesbond" => JamesBond,
        "JourneyEscape" => JourneyEscape,
        "Kaboom" => Kaboom,
        "Kangaroo" => Kangaroo,
        "Krull" => Krull,
        "KungFuMaster" => KungFuMaster,
        "MontezumaRevenge" => MontezumaRevenge,
        "MsPacman" => MsPacman,
        "NameThisGame" => NameThisGame,
        "Phoenix" => Phoenix,
        "Pitfall" => Pitfall,
        "Pong" => Pong,
        "Pooyan" => Pooyan,
        "PrivateEye" => PrivateEye,
        "Qbert" => QBert,
        "Riverraid" => RiverRaid,
        "RoadRunner" => RoadRunner,
        "Robotank" => RoboTank,
        "Seaquest" => Seaquest,
        "Skiing" => Skiing,
        "SpaceInvaders" => SpaceInvaders,
        "StarGunner" => StarGunner,
        "Tennis" => Tennis,
        "TimePilot" => TimePilot,
        "Tutankham" => Tutankham,
        "UpNDown" => UpNDown,
        "Venture" => Venture,
        "VideoPinball" => VideoPinball,
        "WizardOfWor" => WizardOfWor,
        "YarsRevenge" => YarsRevenge,
        "Zaxxon" => Zaxxon,
        _ => return None,
    })
}

/// Splits an Atari id into its game and that id's default options: `ALE/<Game>-v5` or
/// `<Game>NoFrameskip-v4`, for a bundled game.
pub fn parse_id(id: &str) -> Option<(String, AtariConfig)> {
    let (game, config) = if let Some(game) = id.strip_prefix("ALE/").and_then(|g| g.strip_suffix("-v5")) {
        (game, AtariConfig::v5())
    } else if let Some(game) = id.strip_suffix("NoFrameskip-v4") {
        (game, AtariConfig::no_frameskip_v4())
    } else {
        return None;
    };
    bundled_rom(game).map(|_| (game.to_string(), config))
}

/// Makes unique temporary ROM paths within this process.
static ROM_FILES: AtomicU64 = AtomicU64::new(0);

/// An owned ALE instance. The raw pointer makes it neither `Send` nor `Sync`, which is right:
/// ALE keeps global state per instance and is not thread-safe.
struct Ale {
    ptr: *mut ale_sys::ALEInterface,
}

impl Ale {
    fn new() -> Self {
        // ALE prints its banner and ROM details at Info level.
        unsafe { ale_sys::setLoggerMode(2) };
        let ptr = unsafe { ale_sys::ALE_new() };
        assert!(!ptr.is_null(), "ALE_new failed");
        Ale { ptr }
    }

    fn set_int(&mut self, key: &str, value: i32) {
        let key = CString::new(key).expect("setting names have no NUL");
        unsafe { ale_sys::setInt(self.ptr, key.as_ptr(), value) }
    }

    fn set_float(&mut self, key: &str, value: f32) {
        let key = CString::new(key).expect("setting names have no NUL");
        unsafe { ale_sys::setFloat(self.ptr, key.as_ptr(), value) }
    }

    /// Loads the ROM, which also applies the settings set before (ALE reads them here).
    fn load_rom(&mut self, rom: &BundledRom) -> Result<()> {
        // ALE reads ROMs from files: write ours to a private temporary folder, load, delete.
        let n = ROM_FILES.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tune-ale-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path: PathBuf = dir.join(rom.filename());
        std::fs::write(&path, rom.data()).with_context(|| format!("cannot write ROM {}", path.display()))?;
        let c_path = CString::new(path.to_string_lossy().as_bytes()).context("temporary path has a NUL byte")?;
        unsafe { ale_sys::loadROM(self.ptr, c_path.as_ptr()) };
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    fn act(&mut self, action: i32) -> i32 {
        unsafe { ale_sys::act(self.ptr, action) }
    }

    fn game_over(&self) -> bool {
        unsafe { ale_sys::game_over(self.ptr) }
    }

    fn reset_game(&mut self) {
        unsafe { ale_sys::reset_game(self.ptr) }
    }

    fn lives(&self) -> i32 {
        unsafe { ale_sys::lives(self.ptr) }
    }

    fn episode_frame_number(&self) -> i32 {
        unsafe { ale_sys::getEpisodeFrameNumber(self.ptr) }
    }

    fn screen_size(&self) -> (usize, usize) {
        let h = unsafe { ale_sys::getScreenHeight(self.ptr) };
        let w = unsafe { ale_sys::getScreenWidth(self.ptr) };
        (h as usize, w as usize)
    }

    fn action_set(&self, full: bool) -> Vec<i32> {
        unsafe {
            let n = if full { ale_sys::getLegalActionSize(self.ptr) } else { ale_sys::getMinimalActionSize(self.ptr) };
            let mut actions = vec![0; n.max(0) as usize];
            if full {
                ale_sys::getLegalActionSet(self.ptr, actions.as_mut_ptr());
            } else {
                ale_sys::getMinimalActionSet(self.ptr, actions.as_mut_ptr());
            }
            actions
        }
    }

    /// Copies the screen into `out`: `height * width` luminance bytes, or `* 3` RGB bytes.
    fn screen(&self, grayscale: bool, out: &mut [u8]) {
        let (h, w) = self.screen_size();
        if grayscale {
            assert!(out.len() >= h * w);
            unsafe { ale_sys::getScreenGrayscale(self.ptr, out.as_mut_ptr()) }
        } else {
            assert!(out.len() >= h * w * 3);
            unsafe { ale_sys::getScreenRGB(self.ptr, out.as_mut_ptr()) }
        }
    }
}

impl Drop for Ale {
    fn drop(&mut self) {
        unsafe { ale_sys::ALE_del(self.ptr) }
    }
}

/// An Atari game with the DQN preprocessing stack; see the module docs. Not `Send` (ALE).
pub struct AtariEnv {
    ale: Ale,
    rom: BundledRom,
    config: AtariConfig,
    /// ALE action numbers, indexed by our action.
    actions: Vec<i32>,
    /// Whether the game starts on FIRE (SB3's test: action 1 is FIRE and there are 3 or more).
    fire_starts: bool,
    screen: (usize, usize),
    /// The last two raw frames of a skip (`[previous, last]`).
    raw: [Vec<u8>; 2],
    pre: Preprocessor,
    rgb: Vec<u8>,
    rng: StdRng,
    lives: i32,
    /// The last episode ended by game over or the frame cap, so the next reset is a real one.
    real_done: bool,
}

impl AtariEnv {
    /// Starts ALE with `config`'s settings and loads `game`'s bundled ROM.
    pub fn new(game: &str, config: AtariConfig) -> Result<Self> {
        config.validate().map_err(|e| anyhow::anyhow!(e))?;
        let rom = bundled_rom(game).ok_or_else(|| {
            InputError::new(format!("no bundled Atari ROM `{game}`; bundled games: {}", GAMES.join(", ")))
        })?;
        let mut rng = StdRng::from_os_rng();
        let mut ale = Ale::new();
        // Settings only take effect when a ROM is loaded, so set them all first.
        ale.set_float("repeat_action_probability", config.repeat_action_probability);
        // We skip frames ourselves, to sum rewards and max-pool the last two frames.
        ale.set_int("frame_skip", 1);
        ale.set_int("random_seed", rng.random_range(0..i32::MAX));
        ale.load_rom(&rom)?;
        let actions = ale.action_set(config.full_action_space);
        let fire_starts = actions.len() >= 3 && actions[1] == FIRE;
        let screen = ale.screen_size();
        let channels = if config.grayscale { 1 } else { 3 };
        let frame_len = screen.0 * screen.1 * channels;
        Ok(AtariEnv {
            pre: Preprocessor::new(screen, channels, config.screen_size, config.frame_stack),
            raw: [vec![0; frame_len], vec![0; frame_len]],
            rgb: vec![0; screen.0 * screen.1 * 3],
            lives: ale.lives(),
            real_done: true,
            ale,
            rom,
            config,
            actions,
            fire_starts,
            screen,
            rng,
        })
    }

    /// Lives left, as ALE reports them.
    pub fn lives(&self) -> i32 {
        self.ale.lives()
    }

    /// Whether the game itself is over (not just a life).
    pub fn game_over(&self) -> bool {
        self.ale.game_over()
    }

    /// Emulator frames since the last real reset.
    pub fn episode_frame_number(&self) -> u32 {
        self.ale.episode_frame_number().max(0) as u32
    }

    /// ALE's action numbers behind our action indices (e.g. Breakout: NOOP, FIRE, RIGHT, LEFT).
    pub fn ale_actions(&self) -> &[i32] {
        &self.actions
    }

    /// The raw screen size `(height, width)`.
    pub fn screen_shape(&self) -> (usize, usize) {
        self.screen
    }

    /// SB3's `MaxAndSkipEnv` step: `frame_skip` emulator frames, rewards summed, the last two
    /// frames captured for max pooling. Returns the summed (unclipped) reward.
    fn skip(&mut self, ale_action: i32) -> f64 {
        let skip = self.config.frame_skip as usize;
        let mut reward = 0.0;
        for i in 0..skip {
            reward += self.ale.act(ale_action) as f64;
            let over = self.ale.game_over();
            if i + 2 == skip && self.config.max_pool {
                self.ale.screen(self.config.grayscale, &mut self.raw[0]);
            }
            if i + 1 == skip || over {
                self.ale.screen(self.config.grayscale, &mut self.raw[1]);
                if over && i + 1 < skip {
                    // Ended early: pool the final frame with itself (SB3 would reuse a stale
                    // frame from the previous step here).
                    let (previous, last) = self.raw.split_at_mut(1);
                    previous[0].copy_from_slice(&last[0]);
                }
                break;
            }
        }
        reward
    }

    /// Processes the captured frames into the stacked observation.
    fn observe(&mut self, reset: bool) -> &[u8] {
        let (previous, last) = self.raw.split_at_mut(1);
        let previous = if self.config.max_pool && self.config.frame_skip > 1 { Some(&previous[0][..]) } else { None };
        self.pre.push(&mut last[0], previous, reset)
    }

    /// A real reset: restart the game and play 1..=noop_max NOOP frames (SB3's `NoopResetEnv`).
    fn real_reset(&mut self) {
        self.ale.reset_game();
        if self.config.noop_max > 0 {
            let noops = self.rng.random_range(1..=self.config.noop_max);
            for _ in 0..noops {
                self.ale.act(NOOP);
                if self.ale.game_over() {
                    self.ale.reset_game();
                }
            }
        }
    }
}

impl Env for AtariEnv {
    fn observation_space(&self) -> ObsSpace {
        let (height, width) = self.config.screen_size.map_or(self.screen, |s| (s, s));
        ObsSpace::Pixels {
            frames: self.config.frame_stack,
            height,
            width,
            channels: if self.config.grayscale { 1 } else { 3 },
        }
    }

    fn action_space(&self) -> ActionSpace {
        ActionSpace { n: self.actions.len() }
    }

    fn reset(&mut self, seed: Option<u64>) -> Obs<'_> {
        if let Some(seed) = seed {
            // ALE reads its seed when loading a ROM (as ale-py's `seed_game`), so reload.
            self.rng = StdRng::seed_from_u64(seed);
            let ale_seed = self.rng.random_range(0..i32::MAX);
            self.ale.set_int("random_seed", ale_seed);
            self.ale.load_rom(&self.rom).expect("reloading a bundled ROM that loaded before");
            self.real_done = true;
        }
        // SB3's `EpisodicLifeEnv`: after a lost life, a NOOP step continues the same game.
        if !self.config.episodic_life || self.real_done {
            self.real_reset();
            self.ale.screen(self.config.grayscale, &mut self.raw[1]);
            let (previous, last) = self.raw.split_at_mut(1);
            previous[0].copy_from_slice(&last[0]);
        } else {
            self.skip(NOOP);
        }
        self.real_done = false;
        self.lives = self.ale.lives();
        // SB3's `FireResetEnv`: FIRE, then the third action, to launch the ball.
        if self.config.fire_reset && self.fire_starts {
            for index in [1, 2] {
                self.skip(self.actions[index]);
                if self.ale.game_over() {
                    self.real_reset();
                }
            }
            self.lives = self.ale.lives();
        }
        Obs::U8(self.observe(true))
    }

    fn step(&mut self, action: usize) -> Step<'_> {
        let ale_action = self.actions[action];
        let mut reward = self.skip(ale_action);
        let game_over = self.ale.game_over();
        let mut terminated = game_over;
        if self.config.episodic_life {
            let lives = self.ale.lives();
            if lives > 0 && lives < self.lives {
                terminated = true;
            }
            self.lives = lives;
        }
        let truncated = !game_over && self.episode_frame_number() >= self.config.max_frames_per_episode;
        self.real_done = game_over || truncated;
        if self.config.clip_rewards {
            reward = clip_reward(reward);
        }
        Step { obs: Obs::U8(self.observe(false)), reward, terminated, truncated }
    }

    fn render(&mut self) -> Frame<'_> {
        self.ale.screen(false, &mut self.rgb);
        Frame { width: self.screen.1, height: self.screen.0, rgb: &self.rgb }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_game_has_ids() {
        for game in GAMES {
            assert!(bundled_rom(game).is_some(), "{game}");
            assert_eq!(parse_id(&format!("ALE/{game}-v5")).unwrap().1, AtariConfig::v5());
            assert_eq!(parse_id(&format!("{game}NoFrameskip-v4")).unwrap().0, game);
        }
        assert!(parse_id("ALE/Tetris-v5").is_none());
        assert!(parse_id("Breakout-v4").is_none());
    }
}
