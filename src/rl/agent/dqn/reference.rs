//! Every head's loss and gradient against a PyTorch reference written from the papers'
//! equations (`tests/python/dqn_loss_reference.py`, issue 15, item 5): the same weights and batch
//! go to both, in float64 there, float32 here. The batches have terminal rows, n-step discounts,
//! importance weights, and returns that put the shifted C51 support past both of its edges and
//! exactly onto an atom.
//!
//! Skipped with a printed reason when `.venv/bin/python` cannot import torch.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::*;

fn python() -> Option<PathBuf> {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let ok = Command::new(&py).args(["-c", "import torch"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

fn space() -> ObsSpace {
    ObsSpace::Box { low: vec![-1.0; 3], high: vec![1.0; 3] }
}

/// Variables by name: shape and values.
fn dump(net: &Network) -> Value {
    let vars: serde_json::Map<String, Value> = net
        .named()
        .into_iter()
        .map(|(name, t)| {
            let mut data = vec![0f32; t.numel()];
            t.copy_data(&mut data, t.numel());
            (name, json!({"shape": t.size(), "data": data}))
        })
        .collect();
    Value::Object(vars)
}

/// Random weights in `[-scale, scale]` for the online and target networks.
fn randomise(agent: &mut DqnAgent, rng: &mut StdRng, scale: f32) {
    let _guard = tch::no_grad_guard();
    for net in std::iter::once(&mut agent.online).chain(agent.target.as_mut()) {
        let values: Vec<f32> = (0..net.flat.numel()).map(|_| rng.random_range(-scale..scale)).collect();
        net.flat.copy_(&Tensor::from_slice(&values));
    }
}

/// A batch of 6 rows: returns past both edges of a `[-2, 2]` support, one on an atom, two
/// terminal rows; `discount` is `gamma^n`.
fn fill(agent: &mut DqnAgent, rng: &mut StdRng, discount: f32, weighted: bool) -> Value {
    let b = agent.cfg.batch_size;
    let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let (obs, next_obs) = (draw(3 * b), draw(3 * b));
    let batch = &mut agent.batch;
    let (ObsBatch::F32(o), ObsBatch::F32(n)) = (&mut batch.obs, &mut batch.next_obs) else { unreachable!() };
    o.copy_from_slice(&obs);
    n.copy_from_slice(&next_obs);
    batch.actions.copy_from_slice(&[0, 2, 1, 1, 0, 2]);
    batch.returns.copy_from_slice(&[0.3, 5.0, -4.0, 1.0, -0.7, 1.5]);
    batch.discounts.fill(discount);
    batch.terminated.copy_from_slice(&[0.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    let weights: Vec<f32> = if weighted { vec![1.0, 0.5, 0.25, 0.8, 0.1, 0.6] } else { vec![1.0; b] };
    batch.weights.copy_from_slice(&weights);
    json!({
        "obs": obs, "next_obs": next_obs, "actions": batch.actions, "returns": batch.returns,
        "discounts": batch.discounts, "terminated": batch.terminated, "weights": weights,
    })
}

/// One case through tune: the agent (its gradient written), its loss, and the case as the
/// reference reads it; `tensors` turns the host path of the CPU heads off.
fn run(cfg: &DqnConfig, tensors: bool) -> (DqnAgent, f64, Value) {
    let mut agent = DqnAgent::new(cfg, &space(), ActionSpace { n: 3 }, Device::Cpu, 0).unwrap();
    if tensors {
        agent.host = None;
    }
    let mut rng = StdRng::seed_from_u64(11);
    randomise(&mut agent, &mut rng, 0.6);
    let prioritized = matches!(cfg.replay, ReplaySpec::Prioritized { .. });
    let batch = fill(&mut agent, &mut rng, 0.9f32.powi(cfg.n_step as i32), prioritized);
    agent.draw_samples();
    let loss = agent.loss_and_gradient().unwrap();
    let taus = agent.fractions.as_ref().map(|f| {
        let host = |t: &Tensor| Vec::<f32>::try_from(&t.reshape([-1])).unwrap();
        json!({"online": host(&f.online), "target": host(&f.target), "policy": host(&f.policy)})
    });
    let case = json!({
        "head": serde_json::to_value(&cfg.head).unwrap(),
        "loss": cfg.loss_kind().name(),
        "dueling": cfg.net.as_ref().unwrap().dueling(),
        "double": cfg.double,
        "munchausen": serde_json::to_value(&cfg.munchausen).unwrap(),
        "n_actions": 3,
        "width": agent.atoms,
        "online": dump(&agent.online),
        "target": dump(agent.target.as_ref().unwrap()),
        "batch": batch,
        "taus": taus,
    });
    (agent, loss, case)
}

/// The reference's answers to `cases`, from one Python process.
fn reference(py: &Path, cases: &[Value]) -> Vec<Value> {
    let mut child = Command::new(py)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/dqn_loss_reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), cases).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the reference failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Requires tune's loss and gradient to equal the reference's.
fn check(name: &str, agent: &DqnAgent, loss: f64, reference: &Value) {
    let expected_loss = reference["loss"].as_f64().unwrap();
    assert!(
        (loss - expected_loss).abs() <= 1e-5 * expected_loss.abs().max(1.0),
        "{name}: loss {loss} vs reference {expected_loss}"
    );
    let mut worst = 0f64;
    let mut offset = 0;
    for (var, _) in agent.online.named().into_iter().filter(|(n, _)| !is_noise(n)) {
        let expected: Vec<f64> =
            reference["grads"][&var].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let n = expected.len();
        let mut got = vec![0f32; n];
        agent.online.grad.narrow(0, offset, n as i64).copy_data(&mut got, n);
        offset += n as i64;
        for (g, e) in got.iter().zip(&expected) {
            let diff = (*g as f64 - e).abs();
            assert!(diff <= 1e-5 + 1e-4 * e.abs(), "{name}: d loss / d {var}: {g} vs reference {e}");
            worst = worst.max(diff);
        }
    }
    assert!(reference["grads"].as_object().unwrap().values().any(|g| g.as_array().unwrap().iter().any(|v| v != 0.0)));
    println!("{name}: loss {loss:.6} (reference {expected_loss:.6}), largest gradient difference {worst:.2e}");
}

fn config(head: HeadSpec, dueling: bool, double: bool, prioritized: bool, n_step: usize) -> DqnConfig {
    let replay = if prioritized {
        ReplaySpec::Prioritized { size: 64, alpha: 0.6, beta: 0.4, beta_fraction: 1.0, epsilon: 1e-6 }
    } else {
        ReplaySpec::Uniform { size: 64 }
    };
    DqnConfig {
        net: Some(NetSpec::Mlp { hidden: vec![5], dueling }),
        head,
        double,
        n_step,
        replay,
        batch_size: 6,
        gamma: 0.9,
        ..Default::default()
    }
}

#[test]
fn every_head_matches_the_pytorch_reference() {
    let Some(py) = python() else {
        println!("skipped: .venv/bin/python cannot import torch (run scripts/setup.sh)");
        return;
    };
    let c51_head = || HeadSpec::C51 { atoms: 5, v_min: -2.0, v_max: 2.0 };
    let c51 = c51_head();
    let qr = |kappa| HeadSpec::Qr { quantiles: 4, kappa };
    let m = |tau| Some(Munchausen { alpha: 0.9, tau, clip: -1.0 });
    let iqn = |kappa| HeadSpec::Iqn { n_tau: 3, n_tau_prime: 4, k_policy: 5, kappa, embedding: 6 };
    let noisy = Some(Noisy { sigma0: 0.5 });
    let cases = [
        ("expected huber, fused MLP", config(HeadSpec::Expected, false, false, false, 1)),
        (
            "expected mse, dueling, double, PER",
            DqnConfig { loss: Some(LossKind::Mse), ..config(HeadSpec::Expected, true, true, true, 3) },
        ),
        ("c51, fused MLP", config(c51.clone(), false, false, false, 1)),
        ("c51, dueling, double, PER, 3-step", config(c51.clone(), true, true, true, 3)),
        ("c51, fused MLP, double, PER", config(c51, false, true, true, 1)),
        ("qr kappa 1, fused MLP", config(qr(1.0), false, false, false, 1)),
        ("qr kappa 0, dueling, double, PER, 3-step", config(qr(0.0), true, true, true, 3)),
        ("qr kappa 2, fused MLP, double", config(qr(2.0), false, true, false, 1)),
        (
            "munchausen tau 0.03, expected, fused MLP",
            DqnConfig { munchausen: m(0.03), ..config(HeadSpec::Expected, false, false, false, 1) },
        ),
        (
            "munchausen tau 0.5, expected, dueling, PER, 3-step",
            DqnConfig { munchausen: m(0.5), ..config(HeadSpec::Expected, true, false, true, 3) },
        ),
        (
            "munchausen tau 0.5, c51, dueling, PER",
            DqnConfig { munchausen: m(0.5), ..config(c51_head(), true, false, true, 1) },
        ),
        (
            "munchausen tau 0.03, c51, fused MLP",
            DqnConfig { munchausen: m(0.03), ..config(c51_head(), false, false, false, 3) },
        ),
        (
            "munchausen tau 0.5, qr kappa 1, fused MLP, PER",
            DqnConfig { munchausen: m(0.5), ..config(qr(1.0), false, false, true, 1) },
        ),
        ("iqn kappa 1", config(iqn(1.0), false, false, false, 1)),
        ("iqn kappa 0, dueling, double, PER, 3-step", config(iqn(0.0), true, true, true, 3)),
        (
            "munchausen tau 0.5, iqn kappa 1, dueling",
            DqnConfig { munchausen: m(0.5), ..config(iqn(1.0), true, false, false, 1) },
        ),
        (
            "noisy, expected huber, double",
            DqnConfig { noisy: noisy.clone(), ..config(HeadSpec::Expected, false, true, false, 1) },
        ),
        (
            "noisy, c51, dueling, double, PER, 3-step (Rainbow)",
            DqnConfig { noisy: noisy.clone(), ..config(c51_head(), true, true, true, 3) },
        ),
        (
            "noisy, iqn kappa 1, munchausen tau 0.5, PER",
            DqnConfig { noisy: noisy.clone(), munchausen: m(0.5), ..config(iqn(1.0), false, false, true, 1) },
        ),
        ("noisy, qr kappa 1, dueling", DqnConfig { noisy, ..config(qr(1.0), true, false, false, 1) }),
    ];
    let runs: Vec<_> = cases.iter().map(|(_, cfg)| run(cfg, false)).collect();
    let answers = reference(&py, &runs.iter().map(|(_, _, case)| case.clone()).collect::<Vec<_>>());
    assert_eq!(answers.len(), cases.len());
    let mut host_cases = 0;
    for (((name, cfg), (agent, loss, _)), answer) in cases.iter().zip(&runs).zip(&answers) {
        let host = agent.host.is_some();
        check(&format!("{name}{}", if host { " (host path)" } else { "" }), agent, *loss, answer);
        if host {
            // The tensor path, which CUDA runs, on the same case.
            host_cases += 1;
            let (agent, loss, _) = run(cfg, true);
            check(&format!("{name} (tensor path)"), &agent, loss, answer);
        }
    }
    assert!(host_cases >= 6, "the C51 and QR cases without Munchausen take the host path on CPU");
}
