"""PyTorch reference for tune's DQN losses (issue 15, item 5), written from the papers' equations.

Reads a list of cases as JSON on stdin (each: the online and target networks' weights by
variable name, a batch, the head and the options) and prints, for each, the loss and its
gradient with respect to every online variable as JSON. `src/rl/agent/reference.rs` writes the cases and compares.

- expected head: y = G + gamma^n (1 - done) Q'(s', a*), loss mean_j w_j L(Q(s_j, a_j) - y_j),
  L the Huber loss (threshold 1) or the squared error (Mnih et al. 2015).
- c51: Bellemare et al. 2017, Algorithm 1, literally: for each atom j, Tz_j = [r + gamma z_j]
  clipped to [V_MIN, V_MAX], b_j = (Tz_j - V_MIN) / dz, l = floor(b_j), u = ceil(b_j),
  m_l += p_j(s', a*) (u - b_j), m_u += p_j(s', a*) (b_j - l); when l == u (b_j an integer) the
  whole mass goes to atom l, as in the reference implementations (Dopamine, Kaixhin/Rainbow);
  loss -sum_i m_i log p_i(s, a).
- qr: Dabney et al. 2018a, eq. 10: tau_i = (2i + 1) / 2N,
  loss sum_i (1/N) sum_j rho^kappa_{tau_i}(T theta_j - theta_i),
  rho^kappa_tau(u) = |tau - 1{u < 0}| L_kappa(u) / kappa, and rho^0_tau(u) = u (tau - 1{u < 0}).
- iqn: Dabney et al. 2018b, eq. 3-4: Z_tau(x, a) = f(psi(x) * phi(tau)) with
  phi_j(tau) = ReLU(sum_{i=0}^{n-1} cos(pi i tau) w_ij + b_j); loss as qr with the sampled
  fractions tau_i (N per row) and target values at the sampled tau'_j (N' per row); actions valued
  by the mean over K sampled fractions. tune's fractions come with the case.
- noisy layers: Fortunato et al. 2018, eq. 9-11 in their weight form,
  w = mu_w + sigma_w * (f(eps_out) f(eps_in)^T), b = mu_b + sigma_b * f(eps_out), with tune's
  f(eps) (the `noise_in` / `noise_out` variables) given in the case.
- dueling (Wang et al. 2016, eq. 9), per atom for the distributional heads (Hessel et al. 2018).
- a* = argmax_a of the mean of the target network's outputs, or the online network's (double).
- Munchausen (Vieillard et al. 2020, eq. 2 with the log-sum-exp trick): pi = softmax(q / tau)
  of the target network's mean values, y = r + alpha clip(tau log pi(a|s), l0, 0)
  + gamma sum_a' pi(a'|s') (q'(s', a') - tau log pi(a'|s')); for the distributional heads the
  target is the pi-mixture over a' of the distributions of q'(s', a') - tau log pi(a'|s'),
  shifted by the same bonus (M-IQN's form, Vieillard et al. Appendix).
"""

import json
import math
import sys

import torch
import torch.nn.functional as F


def linear(params, name, x):
    """A plain layer, or a noisy one in the paper's weight form when it has `*_sigma` variables."""
    w, b = params[f"{name}.weight"], params[f"{name}.bias"]
    if f"{name}.weight_sigma" in params:
        f_in, f_out = params[f"{name}.noise_in"], params[f"{name}.noise_out"]
        w = w + params[f"{name}.weight_sigma"] * torch.outer(f_out, f_in)
        b = b + params[f"{name}.bias_sigma"] * f_out
    return F.linear(x, w, b)


def mlp(params, prefix, x):
    """Linear -> ReLU -> ... -> Linear, with variables `{prefix}{i}.weight` / `.bias`."""
    i = 0
    while f"{prefix}{i + 1}.weight" in params:
        x = F.relu(linear(params, f"{prefix}{i}", x))
        i += 1
    return linear(params, f"{prefix}{i}", x)


def body(params, case, x):
    """The hidden layers (the dueling trunk, or all but the last layer of a plain MLP)."""
    prefix = "trunk." if case["dueling"] else ""
    i = 0
    while f"{prefix}{i}.weight" in params and (case["dueling"] or f"{i + 1}.weight" in params):
        x = F.relu(linear(params, f"{prefix}{i}", x))
        i += 1
    return x


def head_out(params, case, h):
    """[.., A, K] outputs from the body's features: the last layer, or the dueling streams."""
    a = case["n_actions"]
    if case["dueling"]:
        value = mlp(params, "value.", h)
        adv = mlp(params, "advantage.", h)
        value = value.view(*value.shape[:-1], 1, -1)
        adv = adv.view(*adv.shape[:-1], a, -1)
        return value + adv - adv.mean(dim=-2, keepdim=True)
    last = 0
    while f"{last + 1}.weight" in params:
        last += 1
    out = linear(params, str(last), h)
    return out.view(*out.shape[:-1], a, -1)


def outputs(params, case, x, taus=None):
    """[B, A, K] network outputs; for IQN, at the fractions taus [B, M] (K = M)."""
    h = body(params, case, x)
    if taus is None:
        return head_out(params, case, h)
    n = params["tau_embedding.weight"].shape[1]
    cos = torch.cos(math.pi * torch.arange(n, dtype=torch.float64) * taus.unsqueeze(-1))  # [B, M, n]
    phi = F.relu(F.linear(cos, params["tau_embedding.weight"], params["tau_embedding.bias"]))
    z = h.unsqueeze(1) * phi  # [B, M, d]
    return head_out(params, case, z)[..., 0].transpose(1, 2)  # [B, M, A, 1] -> [B, A, M]


def mean_q(out, head):
    if head["type"] == "c51":
        support = torch.linspace(head["v_min"], head["v_max"], head["atoms"], dtype=torch.float64)
        return (out.softmax(-1) * support).sum(-1)
    return out.mean(-1)


def c51_projection(p_next, returns, discounts, shift, head):
    """Algorithm 1 for each row b and bootstrap action c (weights already in p_next [B, C, K]),
    atoms shifted by shift[b][c] (0 without Munchausen)."""
    atoms, v_min, v_max = head["atoms"], head["v_min"], head["v_max"]
    dz = (v_max - v_min) / (atoms - 1)
    z = [v_min + i * dz for i in range(atoms)]
    m = torch.zeros(p_next.shape[0], atoms, dtype=torch.float64)
    for b in range(p_next.shape[0]):
        for c in range(p_next.shape[1]):
            for j in range(atoms):
                tz = min(max(returns[b] + discounts[b] * (z[j] + shift[b][c]), v_min), v_max)
                bj = (tz - v_min) / dz
                l, u = math.floor(bj), math.ceil(bj)
                if l == u:
                    m[b, l] += p_next[b, c, j]
                else:
                    m[b, l] += p_next[b, c, j] * (u - bj)
                    m[b, u] += p_next[b, c, j] * (bj - l)
    return m


def solve(case):
    head = case["head"]
    to = lambda v: torch.tensor(v["data"], dtype=torch.float64).view(v["shape"])
    is_noise = lambda n: n.endswith(".noise_in") or n.endswith(".noise_out")
    online = {n: to(v).requires_grad_(not is_noise(n)) for n, v in case["online"].items()}
    target = {n: to(v) for n, v in case["target"].items()}
    batch = case["batch"]
    bsz = len(batch["actions"])
    obs = torch.tensor(batch["obs"], dtype=torch.float64).view(bsz, -1)
    next_obs = torch.tensor(batch["next_obs"], dtype=torch.float64).view(bsz, -1)
    actions = torch.tensor(batch["actions"])
    returns = batch["returns"]
    discounts = [d * (1.0 - t) for d, t in zip(batch["discounts"], batch["terminated"])]
    weights = torch.tensor(batch["weights"], dtype=torch.float64)
    rows = torch.arange(bsz)

    g = torch.tensor(returns, dtype=torch.float64)
    d = torch.tensor(discounts, dtype=torch.float64)
    iqn = head["type"] == "iqn"
    taus = {k: torch.tensor(v, dtype=torch.float64).view(bsz, -1) for k, v in case["taus"].items()} if iqn else {}
    with torch.no_grad():
        next_target = outputs(target, case, next_obs, taus.get("target"))  # [B, A, K]

        def policy_q(params, x):
            """Mean values: IQN's over the K policy fractions, else of the outputs."""
            return mean_q(outputs(params, case, x, taus.get("policy")), head)

        next_q = policy_q(target, next_obs) if iqn else mean_q(next_target, head)
        mun = case.get("munchausen")
        if mun:
            # Bootstrap from every action, weighted by pi(a'|s'), shifted by -tau log pi(a'|s').
            alpha, tau, l0 = mun["alpha"], mun["tau"], mun["clip"]
            log_pi_s = F.log_softmax(policy_q(target, obs) / tau, dim=1)[rows, actions]
            g = g + alpha * torch.clamp(tau * log_pi_s, min=l0, max=0.0)
            log_pi_next = F.log_softmax(next_q / tau, dim=1)
            mix, shift, next_chosen = log_pi_next.exp(), -tau * log_pi_next, next_target
        else:
            best = (policy_q(online, next_obs) if case["double"] else next_q).argmax(1)
            next_chosen = next_target[rows, best].unsqueeze(1)  # [B, 1, K]
            mix, shift = torch.ones(bsz, 1, dtype=torch.float64), torch.zeros(bsz, 1, dtype=torch.float64)
    out = outputs(online, case, obs, taus.get("online"))[rows, actions]  # [B, K]

    if head["type"] == "expected":
        with torch.no_grad():
            y = g + d * (mix * (next_chosen[:, :, 0] + shift)).sum(1)
        delta = out[:, 0] - y
        if case["loss"] == "mse":
            per_row = delta**2
        else:
            per_row = F.huber_loss(out[:, 0], y, reduction="none", delta=1.0)
    elif head["type"] == "c51":
        with torch.no_grad():
            p_next = next_chosen.softmax(-1) * mix.unsqueeze(-1)
            m = c51_projection(p_next, g.tolist(), discounts, shift.tolist(), head)
        per_row = -(m * F.log_softmax(out, dim=-1)).sum(-1)
    else:
        kappa = head["kappa"]
        if iqn:
            fractions = taus["online"]  # [B, N]
        else:
            n = head["quantiles"]
            fractions = torch.tensor([(2 * i + 1) / (2 * n) for i in range(n)], dtype=torch.float64).expand(bsz, n)
        per_row = torch.zeros(bsz, dtype=torch.float64)
        for c in range(next_chosen.shape[1]):
            with torch.no_grad():
                t_theta = g[:, None] + d[:, None] * (next_chosen[:, c] + shift[:, c : c + 1])  # [B, N]
            for i in range(out.shape[1]):
                u = t_theta - out[:, i : i + 1]  # [B, N] over j
                below = (u < 0).double()
                if kappa > 0:
                    huber = torch.where(u.abs() <= kappa, 0.5 * u**2, kappa * (u.abs() - 0.5 * kappa))
                    rho = (fractions[:, i : i + 1] - below).abs() * huber / kappa
                else:
                    rho = u * (fractions[:, i : i + 1] - below)
                per_row = per_row + mix[:, c] * rho.mean(1)
    loss = (weights * per_row).mean()
    loss.backward()
    grads = {n: p.grad.flatten().tolist() for n, p in online.items() if not is_noise(n)}
    return {"loss": loss.item(), "grads": grads}


def main():
    print(json.dumps([solve(case) for case in json.load(sys.stdin)]))


if __name__ == "__main__":
    main()
