//! argmin's L-BFGS (More-Thuente line search, 10 correction pairs) stopped by the rules of
//! scipy's L-BFGS-B, which Optuna's kernel fit and acquisition search use: the largest
//! gradient component at most `gtol` (argmin tests the gradient's L2 norm, which stops later
//! as the dimension grows), or an iteration that lowers the cost by at most
//! `ftol = factr * eps` relative to `max(|f_k|, |f_k+1|, 1)` (argmin's test is absolute).

use argmin::core::{
    CostFunction, Error as ArgminError, Executor, Gradient, IterState, Problem, Solver, State, TerminationReason,
    TerminationStatus, KV,
};
use argmin::solver::linesearch::MoreThuenteLineSearch;
use argmin::solver::quasinewton::LBFGS;

/// scipy's default relative cost tolerance for L-BFGS-B (`factr = 1e7` times machine epsilon).
pub(super) const SCIPY_FTOL: f64 = 1e7 * f64::EPSILON;

/// The last point evaluated with its cost and gradient: argmin asks for the two separately,
/// at the same point, and each evaluation costs a factorisation.
pub(super) type LastEval = Option<(Vec<f64>, f64, Vec<f64>)>;

type Inner = LBFGS<MoreThuenteLineSearch<Vec<f64>, Vec<f64>, f64>, Vec<f64>, Vec<f64>, f64>;
type St = IterState<Vec<f64>, Vec<f64>, (), (), (), f64>;

/// L-BFGS with scipy's stopping rules.
struct ScipyLbfgs {
    inner: Inner,
    gtol: f64,
}

impl<O> Solver<O, St> for ScipyLbfgs
where
    Inner: Solver<O, St>,
{
    fn name(&self) -> &str {
        "L-BFGS (scipy's stopping rules)"
    }

    fn init(&mut self, problem: &mut Problem<O>, state: St) -> Result<(St, Option<KV>), ArgminError> {
        self.inner.init(problem, state)
    }

    fn next_iter(&mut self, problem: &mut Problem<O>, state: St) -> Result<(St, Option<KV>), ArgminError> {
        self.inner.next_iter(problem, state)
    }

    fn terminate(&mut self, state: &St) -> TerminationStatus {
        let converged = TerminationStatus::Terminated(TerminationReason::SolverConverged);
        if let Some(g) = state.get_gradient() {
            if g.iter().all(|v| v.abs() <= self.gtol) {
                return converged;
            }
        }
        let (prev, cost) = (state.get_prev_cost(), state.get_cost());
        if prev.is_finite() && (prev - cost) <= SCIPY_FTOL * prev.abs().max(cost.abs()).max(1.0) {
            return converged;
        }
        TerminationStatus::NotTerminated
    }
}

/// Minimises `problem` from `x0`; the best point and the iterations taken, or `None` when
/// argmin fails (a cost or gradient refused).
pub(super) fn minimise<O>(problem: O, x0: Vec<f64>, gtol: f64, max_iters: u64) -> Option<(Vec<f64>, u64)>
where
    O: CostFunction<Param = Vec<f64>, Output = f64> + Gradient<Param = Vec<f64>, Gradient = Vec<f64>>,
{
    // argmin's own tests are switched off: 0 is never above a norm or an absolute change.
    let inner =
        LBFGS::new(MoreThuenteLineSearch::new(), 10).with_tolerance_grad(0.0).ok()?.with_tolerance_cost(0.0).ok()?;
    let result = Executor::new(problem, ScipyLbfgs { inner, gtol })
        .configure(|s| s.param(x0).max_iters(max_iters))
        .run()
        .ok()?;
    let state = result.state();
    Some((state.get_best_param()?.clone(), state.get_iter()))
}
