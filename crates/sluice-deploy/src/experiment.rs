//! A/B experiments: B (a new release, new config, or both) started beside A
//! in one environment, given a growing share of requests by the proxy's
//! sticky split, judged every second by the analysis; promoted at 100%,
//! rolled back by itself when worse, held for a person when inconclusive.

use sluice_store::{DeploymentCause, DeploymentStatus, ExperimentCommand, ExperimentStatus, Topic};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use sluice_analysis::{
    Action, ErrorRateTest, Evidence, InstanceSecond, LatencyConfig, LatencyJudge, LogHistogram,
    MinEffect, Policy, SampleRatio, Side, decide,
};
use sluice_proxy::goals::{Goal, GoalTracker, RequestRule};
use sluice_proxy::{Route, SecondWindow, Split, Sticky, Variant};
use sluice_spec::{AbData, AbMode, AbStrategy, AbTest, Environment, Metric};
use sluice_store::{Experiment, Release};

use crate::aftermath;
use crate::{Inner, Live};
use crate::{Outcome, instances, rollout};

mod goals;
pub(crate) mod plan;

use plan::{Plan, sticky_of};

/// The experiments loop: takes up every open experiment that nothing here
/// follows, once, woken when one is opened and now and then. After a
/// restart its first pass takes up what the old server left, as it takes
/// up one just opened. The deployments meet it in the experiment's row.
pub(crate) async fn keeper(inner: Arc<Inner>) {
    crate::every_pass(inner, Topic::ExperimentOpened, take_open).await
}

async fn take_open(inner: &Arc<Inner>) {
    let Ok(open) = inner.store.open_experiments(None).await else {
        return;
    };
    for x in open {
        let followed = inner.followed.lock().unwrap().contains(&x.id);
        if followed || !inner.taking_up.lock().unwrap().insert(x.id) {
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            in_its_turn(&inner, x.id).await;
            inner.taking_up.lock().unwrap().remove(&x.id);
            inner.store.wake(Topic::ExperimentEnded).await;
        });
    }
}

/// Takes an open experiment up in its environment's turn and follows it
/// to its end, then settles what asked for it; nothing when it ended
/// while waiting.
async fn in_its_turn(inner: &Arc<Inner>, id: i64) {
    let Some(lock) = inner.env_lock_of_experiment(id).await else {
        return;
    };
    let (outcome, x) = {
        let _one_at_a_time = lock.lock().await;
        // Whoever held the turn may have ended it meanwhile.
        let Ok(x) = inner.store.experiment(id).await else {
            return;
        };
        if !x.is_open() || inner.followed.lock().unwrap().contains(&id) {
            return;
        }
        (take_up(inner, &x).await, x)
    };
    let outcome = outcome.unwrap_or_else(|e| Outcome::Failed(format!("{e:#}")));
    tracing::info!(experiment = x.id, ?outcome, "an experiment ended");
    aftermath::after_experiment(inner, &x, outcome).await
}

/// Watches an experiment until it ends, taking people's commands meanwhile
/// (from the store; a command wakes it at once).
async fn follow(inner: &Arc<Inner>, mut looker: Looker) -> Outcome {
    let id = looker.id;
    inner.followed.lock().unwrap().insert(id);
    let outcome = looker.watch().await;
    inner.followed.lock().unwrap().remove(&id);
    outcome
}

/// B's instances that run already (kept through a restart), healthy, with
/// as many more started as the environment declares; none when B has no
/// instance running.
async fn kept_group(inner: &Arc<Inner>, plan: &Plan) -> Result<Option<Vec<Live>>> {
    let group: Vec<Live> = inner
        .live_in(&plan.b.service, &plan.env.name)
        .into_iter()
        .filter(|l| l.deployment == plan.deployment && l.backend.variant() == Variant::B)
        .collect();
    if group.is_empty() {
        return Ok(None);
    }
    let data_dir = plan.data_dir(inner)?;
    fill_group(inner, plan, group, data_dir.as_deref())
        .await
        .map(Some)
}

/// B's instance group, healthy and marked as variant B (not yet routed),
/// on a copy of the environment's data when the strategy says so.
async fn start_group(inner: &Arc<Inner>, plan: &Plan) -> Result<Vec<Live>> {
    let (b, env) = (&plan.b, &plan.env);
    let state = inner.store.env_state(&b.service, &env.name).await?;
    let b_env = plan.b_env();
    instances::prepare(
        inner,
        b,
        &plan.spec,
        &b_env,
        state.as_ref(),
        plan.deployment,
    )
    .await?;
    let copy = plan.data_dir(inner)?;
    if let Some(copy) = &copy {
        let (data, uid) = (
            inner.layout.data(&b.service, &env.name)?,
            inner.env_uid(&b.service, &env.name),
        );
        let target = copy.clone();
        tokio::task::spawn_blocking(move || crate::data::copy_for_experiment(&data, &target, uid))
            .await??;
    }
    fill_group(inner, plan, Vec::new(), copy.as_deref()).await
}

/// `group` with as many more B instances started (on `data_dir`) as the
/// environment declares, every one healthy and marked as variant B.
async fn fill_group(
    inner: &Arc<Inner>,
    plan: &Plan,
    mut group: Vec<Live>,
    data_dir: Option<&std::path::Path>,
) -> Result<Vec<Live>> {
    let b_env = plan.b_env();
    while group.len() < plan.env.instances as usize {
        let live = instances::start_instance(
            inner,
            &plan.b,
            &plan.spec,
            &b_env,
            plan.deployment,
            Some(instances::OfB {
                experiment: plan.id,
                data_dir,
            }),
        )
        .await?;
        live.backend.set_variant(Variant::B);
        group.push(live);
    }
    for live in &group {
        let ready = instances::ready_timeout(&plan.spec);
        instances::wait_healthy(inner, &live.backend, ready, false).await?;
    }
    Ok(group)
}

/// The goals the entry point counts for the experiment, if it has any.
fn tracker(ab: &AbStrategy) -> Option<Arc<GoalTracker>> {
    let goals = ab
        .goals
        .iter()
        .map(|g| Goal {
            name: g.name.clone(),
            on: g.request.as_ref().and_then(|r| {
                Some(RequestRule {
                    method: r.method.parse().ok()?,
                    path: r.path.clone(),
                    status_class: r.status_class,
                })
            }),
            value: g.value,
        })
        .collect();
    GoalTracker::new(goals).ok().map(Arc::new)
}

fn latency_config(ab: &AbStrategy) -> LatencyConfig {
    LatencyConfig {
        warm_up_requests: ab.warm_up_requests,
        min_effect: MinEffect {
            ratio: ab.min_effect.percent / 100.0,
            micros: ab.min_effect.ms * 1000.0,
        },
        ..LatencyConfig::default()
    }
}

/// Takes an open experiment up at the step it is at: B's group starts
/// beside A, the split goes to the step's weight, and the experiment is
/// watched until it ends. An experiment just opened (`starting`) and one a
/// previous server followed are taken up the same way; the latter's
/// evidence lived in that server, so it goes on afresh and the change log
/// says so (`experiment.resumed`). The caller holds the environment's lock.
pub(crate) async fn take_up(inner: &Arc<Inner>, x: &Experiment) -> Result<Outcome> {
    let plan = Plan::of(inner, x).await?;
    let route = inner.route(&plan.b.service, &plan.env).await?;
    let started = async {
        // B's group kept through a restart (see `Inner::resume`) goes on as it is.
        let group = match kept_group(inner, &plan).await? {
            Some(group) => group,
            None => start_group(inner, &plan).await?,
        };
        let sticky = sticky_of(&plan.ab)?;
        route.set_split(Some(plan.split()?));
        for live in &group {
            route.add(live.backend.clone());
        }
        route.set_goals(tracker(&plan.ab));
        anyhow::Ok(sticky)
    }
    .await;
    let sticky = match started {
        Ok(sticky) => sticky,
        Err(e) => {
            route.set_split(None);
            return never_healthy(inner, x, &plan.b, plan.deployment, &format!("{e:#}")).await;
        }
    };
    let Plan {
        b,
        env,
        ab,
        deployment,
        step,
        ..
    } = plan;
    let mut looker = Looker::new(
        inner.clone(),
        x.id,
        b.clone(),
        env.clone(),
        ab,
        sticky,
        route,
        deployment,
    );
    looker.step = step;
    if looker.holding_test() {
        // The hold's time so far, as recorded when its step began.
        looker.hold_started = Some(x.step_started_at);
    }
    // The users counted before the restart, as last kept.
    if let Some(tracker) = looker.route.goals() {
        let kept = inner.store.experiment_users(x.id).await.unwrap_or_default();
        tracker.restore(kept.into_iter().map(goals::from_row));
    }
    looker.paused = x.status == ExperimentStatus::Paused;
    looker.held = x.status == ExperimentStatus::Held;
    let (status, kind, action, reason, summary) = if x.status == ExperimentStatus::Starting {
        let a = inner.store.release_by_id(x.baseline_release_id).await?;
        let reason = format!(
            "B healthy on {} instances; it gets {}% of users",
            env.instances,
            looker.weight()
        );
        let summary = format!(
            "experiment {}: {} (B) against {} (A) in {}, B at {}%",
            x.id,
            b.name(),
            a.name(),
            env.name,
            looker.weight()
        );
        let running = ExperimentStatus::Running;
        (running, "experiment.started", "start", reason, summary)
    } else {
        // Taken up again: a server before this one followed it.
        let reason = format!(
            "the server restarted; the experiment goes on at {}% with fresh evidence",
            looker.weight()
        );
        let summary = format!("experiment {} of {} resumed: {reason}", x.id, b.name());
        let status = if looker.paused || looker.held {
            x.status
        } else {
            ExperimentStatus::Running
        };
        (status, "experiment.resumed", "resume", reason, summary)
    };
    let decision = json!({ "action": action, "reason": reason, "weight": looker.weight(), "at": looker.now() });
    looker.record(status, kind, decision, &summary).await;
    Ok(follow(inner, looker).await)
}

/// B's group could not start (or start again): the experiment ends rolled
/// back before any user saw B.
async fn never_healthy(
    inner: &Arc<Inner>,
    x: &Experiment,
    b: &Release,
    deployment: i64,
    error: &str,
) -> Result<Outcome> {
    let why = format!("B never became healthy: {error}");
    instances::stop_deployment(inner, &b.service, &x.environment, deployment).await;
    let now = inner.clock.unix_ms();
    let decision = json!({ "action": "rollback", "reason": why, "at": now });
    let summary = format!(
        "experiment {} rolled back {} in {}: {why}",
        x.id,
        b.name(),
        x.environment
    );
    inner
        .store
        .update_experiment(
            x.id,
            ExperimentStatus::RolledBack,
            x.step,
            0,
            now,
            &decision,
            "experiment.rolled_back",
            &summary,
            "sluice",
        )
        .await?;
    inner
        .store
        .finish_deployment(deployment, DeploymentStatus::RolledBack, Some(&why))
        .await?;
    Ok(Outcome::RolledBack(why))
}

/// Where an experiment stands when the analysis has spoken.
#[derive(Clone, Copy, Debug)]
struct Place {
    /// Its step, of `steps`.
    step: usize,
    steps: usize,
    /// Held for a person already.
    held: bool,
    /// Holding at a test's split, where the primary goal decides.
    testing: bool,
}

/// What an experiment does after a look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    Wait,
    /// Stay at this step for a person (once: it is held then).
    Hold,
    /// To the next step's weight.
    Advance,
    Promote,
    /// B is worse: back to A.
    RollBack,
    /// The split does not match the weights: the experiment is broken.
    Broken,
    /// B made a guardrail goal worse.
    BrokenGoal,
    /// The test at its split decides on its primary goal.
    TestVerdict,
}

/// Whether a look asks the analysis at all: not while paused, and not
/// while held until `max_step` has passed again.
fn asks(paused: bool, held: bool, step_elapsed: Duration, max_step: Duration) -> bool {
    !(paused || held && step_elapsed < max_step)
}

/// The judge: the analysis' verdict on the evidence, a guardrail goal and
/// where the experiment stands make its next move. Guardrails act at every
/// step in both modes; a test at its split is decided by its goal.
fn judge(action: Action, broken_goal: bool, at: Place) -> Move {
    match action {
        Action::Rollback => Move::RollBack,
        Action::Broken => Move::Broken,
        _ if broken_goal => Move::BrokenGoal,
        _ if at.testing => Move::TestVerdict,
        Action::Wait => Move::Wait,
        Action::Hold if at.held => Move::Wait,
        Action::Hold => Move::Hold,
        Action::Advance if at.step + 1 >= at.steps => Move::Promote,
        Action::Advance => Move::Advance,
    }
}

/// Seconds since the Unix epoch by the engine's clock: how the entry
/// point's windows are numbered.
fn unix_second(inner: &Inner) -> u64 {
    (inner.clock.unix_ms().max(0) / 1000) as u64
}

/// The experiment's running state: its evidence, step and what it has seen.
struct Looker {
    inner: Arc<Inner>,
    id: i64,
    b: Release,
    env: Environment,
    ab: AbStrategy,
    sticky: Sticky,
    route: Route,
    deployment: i64,
    step: usize,
    /// When this step began (ms, by the engine's clock, as all times here).
    step_started: i64,
    step_b_requests: u64,
    paused: bool,
    held: bool,
    last_second: u64,
    errors: ErrorRateTest,
    /// B's latency against A's over the same seconds, warm instances only.
    latency: LatencyJudge,
    split: SampleRatio,
    a_latency: LogHistogram,
    b_latency: LogHistogram,
    steps: Vec<serde_json::Value>,
    /// When a test began to hold at its split (its users counted from then).
    hold_started: Option<i64>,
    /// Each goal's lift now and then, for the report's chart.
    goal_points: Vec<serde_json::Value>,
    last_goal_point: Option<i64>,
    /// The goals as last looked at (the entry point forgets them at the end).
    last_goals: serde_json::Value,
    /// When the users that changed were last kept in the store.
    users_kept: i64,
}

impl Looker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        inner: Arc<Inner>,
        id: i64,
        b: Release,
        env: Environment,
        ab: AbStrategy,
        sticky: Sticky,
        route: Route,
        deployment: i64,
    ) -> Self {
        let now = unix_second(&inner);
        let now_ms = inner.clock.unix_ms();
        let steps = vec![json!({ "weight": ab.steps[0], "at": now_ms })];
        let ab_config = ab.clone();
        Looker {
            inner,
            id,
            b,
            env,
            ab,
            sticky,
            route,
            deployment,
            step: 0,
            step_started: now_ms,
            step_b_requests: 0,
            paused: false,
            held: false,
            last_second: now,
            errors: ErrorRateTest::default(),
            latency: LatencyJudge::new(latency_config(&ab_config)),
            split: SampleRatio::default(),
            a_latency: LogHistogram::default(),
            b_latency: LogHistogram::default(),
            steps,
            hold_started: None,
            goal_points: Vec::new(),
            last_goal_point: None,
            last_goals: json!([]),
            users_kept: now_ms,
        }
    }

    /// Keeps the users that changed in the store, every 2 s, so that a
    /// restart loses at most those seconds.
    async fn keep_users(&mut self, force: bool) {
        const EVERY: Duration = Duration::from_secs(2);
        if !force && self.since(self.users_kept) < EVERY {
            return;
        }
        self.users_kept = self.now();
        let Some(tracker) = self.route.goals() else {
            return;
        };
        let rows: Vec<_> = tracker
            .take_changed()
            .into_iter()
            .map(goals::to_row)
            .collect();
        if let Err(e) = self.inner.store.save_experiment_users(self.id, &rows).await {
            tracing::warn!(experiment = self.id, error = %e, "could not keep the experiment's users");
        }
    }

    /// The experiment has ended: its users are no longer kept.
    async fn forget_users(&self) {
        self.route.set_goals(None);
        if let Err(e) = self.inner.store.forget_experiment_users(self.id).await {
            tracing::warn!(experiment = self.id, error = %e, "could not forget the experiment's users");
        }
    }

    fn alpha(&self) -> f64 {
        self.policy().alpha
    }

    /// Keeps the goals as looked at now, a point of their chart every 5 s,
    /// and the report up to date with them.
    async fn keep_goal_point(&mut self, goals: &goals::GoalsNow) {
        const EVERY: Duration = Duration::from_secs(5);
        self.last_goals = goals.json.clone();
        if goals.primary.is_none()
            || self
                .last_goal_point
                .is_some_and(|at| self.since(at) < EVERY)
        {
            return;
        }
        self.last_goal_point = Some(self.now());
        let point: Vec<serde_json::Value> = goals
            .json
            .as_array()
            .into_iter()
            .flatten()
            .map(|g| json!({ "goal": g["name"], "a": g["a"]["mean"], "b": g["b"]["mean"], "lift": g["lift"] }))
            .collect();
        self.goal_points
            .push(json!({ "at": self.now(), "weight": self.weight(), "goals": point }));
        // A long test keeps its last 2,000 points (about 3 hours at 5 s).
        if self.goal_points.len() > 2000 {
            self.goal_points.remove(0);
        }
        self.report().await;
    }

    /// A test at its split: promote on "B better" (or wait for a person when
    /// `promote: manual`), keep A on anything else.
    async fn test_verdict(
        &mut self,
        goals: &goals::GoalsNow,
        mut record: serde_json::Value,
    ) -> Option<Outcome> {
        let test = self.test()?.clone();
        let primary = goals.primary.as_ref()?;
        let held_for = self
            .hold_started
            .map_or(Duration::ZERO, |at| self.since(at));
        match goals::test_step(primary, &test, held_for) {
            goals::TestStep::Wait => None,
            goals::TestStep::Promote(reason) if test.manual => {
                if !self.held {
                    self.held = true;
                    record["action"] = json!("hold");
                    record["reason"] = json!(format!(
                        "{reason}; waiting for a person: sluice ab promote {}",
                        self.id
                    ));
                    let summary = format!(
                        "experiment {} of {}: {reason}; waiting for a person to promote it",
                        self.id,
                        self.b.name()
                    );
                    self.record(ExperimentStatus::Held, "experiment.held", record, &summary)
                        .await;
                }
                None
            }
            goals::TestStep::Promote(reason) => Some(self.promote(&reason).await),
            goals::TestStep::Conclude(reason) => {
                record["action"] = json!("conclude");
                record["reason"] = json!(reason);
                Some(
                    self.roll_back(ExperimentStatus::Concluded, &reason, record)
                        .await,
                )
            }
        }
    }

    fn test(&self) -> Option<&AbTest> {
        match &self.ab.mode {
            AbMode::Test(test) => Some(test),
            AbMode::Rollout => None,
        }
    }

    /// A test at its split, waiting for its primary goal to decide.
    fn holding_test(&self) -> bool {
        self.test().is_some() && self.step + 1 >= self.ab.steps.len()
    }

    /// Now, in ms by the engine's clock.
    fn now(&self) -> i64 {
        self.inner.clock.unix_ms()
    }

    /// How long ago `at` (ms, by the engine's clock) was.
    fn since(&self, at: i64) -> Duration {
        Duration::from_millis((self.now() - at).max(0) as u64)
    }

    fn weight(&self) -> f64 {
        f64::from(self.ab.steps[self.step])
    }

    fn policy(&self) -> Policy {
        Policy {
            min_requests: self.ab.min_requests,
            min_duration: self.ab.min_duration,
            max_step: self.ab.max_step,
            error_rate: self.ab.metrics.contains(&Metric::ErrorRate),
            latency_p50: self.ab.metrics.contains(&Metric::LatencyP50),
            latency_p95: self.ab.metrics.contains(&Metric::LatencyP95),
            // With goals, the split is checked in users (see goals::broken).
            request_srm: self.ab.goals.is_empty(),
            ..Policy::default()
        }
    }

    async fn watch(&mut self) -> Outcome {
        let inner = self.inner.clone();
        loop {
            let command_sent = inner.store.woken(Topic::ExperimentCommand);
            // Commands first: one sent before a restart is taken on the first pass.
            if let Some(outcome) = self.obey_waiting().await {
                return outcome;
            }
            tokio::select! {
                _ = command_sent => {}
                _ = tokio::time::sleep(inner.config.look_interval) => {
                    if let Some(outcome) = self.look().await {
                        return outcome;
                    }
                }
                _ = self.inner.shutdown.cancelled() => {
                    // What the users did up to now outlives the server.
                    self.keep_users(true).await;
                    return Outcome::Failed("the server stopped during the experiment".into());
                }
            }
        }
    }

    /// Takes the commands people sent and obeys them in order, until one ends it.
    async fn obey_waiting(&mut self) -> Option<Outcome> {
        let waiting = match self.inner.store.take_experiment_commands(self.id).await {
            Ok(waiting) => waiting,
            Err(e) => {
                tracing::warn!(experiment = self.id, error = %e, "could not read the experiment's commands");
                return None;
            }
        };
        for (command, actor) in waiting {
            if let Some(outcome) = self.obey(command, &actor).await {
                return Some(outcome);
            }
        }
        None
    }

    async fn obey(&mut self, command: ExperimentCommand, actor: &str) -> Option<Outcome> {
        match command {
            ExperimentCommand::Pause => {
                let reason = format!("paused by {actor}");
                self.paused = true;
                self.record(
                    ExperimentStatus::Paused,
                    "experiment.paused",
                    json!({ "action": "pause", "reason": reason }),
                    &reason,
                )
                .await;
                None
            }
            ExperimentCommand::Resume => {
                let reason = format!("resumed by {actor}");
                self.paused = false;
                self.held = false;
                self.step_started = self.now();
                self.record(
                    ExperimentStatus::Running,
                    "experiment.resumed",
                    json!({ "action": "resume", "reason": reason }),
                    &reason,
                )
                .await;
                None
            }
            ExperimentCommand::Promote => Some(self.promote(&format!("promoted by {actor}")).await),
            ExperimentCommand::Abort => {
                let reason = format!("aborted by {actor}");
                Some(
                    self.roll_back(
                        ExperimentStatus::Aborted,
                        &reason,
                        json!({ "action": "abort", "reason": reason }),
                    )
                    .await,
                )
            }
        }
    }

    /// Feeds the seconds that ended since the last look to the analysis and acts on its decision.
    async fn look(&mut self) -> Option<Outcome> {
        let (service, env) = (&self.b.service, &self.env.name);
        // Only seconds every entry point has sent: a host's come a report late.
        let complete = self
            .inner
            .complete_before(service, env, unix_second(&self.inner));
        let windows: Vec<SecondWindow> = self
            .inner
            .windows(service, env, self.last_second)
            .into_iter()
            .filter(|w| w.second < complete)
            .collect();
        for w in &windows {
            self.ingest(w);
        }
        if !asks(
            self.paused,
            self.held,
            self.since(self.step_started),
            self.ab.max_step,
        ) {
            return None;
        }
        let evidence = Evidence {
            errors: &self.errors,
            latency: &self.latency,
            split: &self.split,
            step_requests: self.step_b_requests,
            step_elapsed: self.since(self.step_started),
        };
        let decision = decide(&evidence, &self.policy());
        self.keep_users(false).await;
        let goals = goals::report(&self.route, self.alpha());
        self.keep_goal_point(&goals).await;
        // Each instance's warm latency says which one a latency decision rests on.
        let mut record = json!({ "action": decision.action, "reason": decision.reason, "numbers": decision.numbers, "instances": self.latency.instances(), "goals": goals.json, "weight": self.weight(), "at": self.now() });
        let broken_goal = goals.users.as_ref().and_then(goals::broken);
        let at = Place {
            step: self.step,
            steps: self.ab.steps.len(),
            held: self.held,
            testing: self.holding_test(),
        };
        match judge(decision.action, broken_goal.is_some(), at) {
            Move::Wait => None,
            Move::TestVerdict => self.test_verdict(&goals, record).await,
            Move::BrokenGoal => {
                let why = broken_goal.unwrap_or_default();
                record["action"] = json!("broken");
                record["reason"] = json!(why);
                Some(self.roll_back(ExperimentStatus::Broken, &why, record).await)
            }
            Move::Hold => {
                self.held = true;
                let summary = format!(
                    "experiment {} held at {}% for a person: {}",
                    self.id,
                    self.weight(),
                    decision.reason
                );
                self.record(ExperimentStatus::Held, "experiment.held", record, &summary)
                    .await;
                None
            }
            Move::RollBack => Some(
                self.roll_back(ExperimentStatus::RolledBack, &decision.reason, record)
                    .await,
            ),
            Move::Broken => Some(
                self.roll_back(ExperimentStatus::Broken, &decision.reason, record)
                    .await,
            ),
            Move::Promote => Some(self.promote(&decision.reason).await),
            Move::Advance => {
                let from = self.weight();
                self.step += 1;
                if self.holding_test() {
                    // The test counts the users exposed at its split only.
                    let _ = self.inner.store.forget_experiment_users(self.id).await;
                    self.route.set_goals(tracker(&self.ab));
                    self.hold_started = Some(self.now());
                }
                self.step_started = self.now();
                self.step_b_requests = 0;
                let to = self.weight();
                if let Ok(split) = Split::new(to, self.sticky.clone(), self.ab.allow_force) {
                    self.route.set_split(Some(split));
                }
                self.steps.push(json!({ "weight": to, "at": self.now() }));
                let summary = format!(
                    "experiment {}: B from {from}% to {to}%: {}",
                    self.id, decision.reason
                );
                self.record(
                    ExperimentStatus::Running,
                    "experiment.step",
                    record,
                    &summary,
                )
                .await;
                None
            }
        }
    }

    fn ingest(&mut self, w: &SecondWindow) {
        self.last_second = w.second;
        self.errors
            .observe(w.a.requests, w.a.errors, w.b.requests, w.b.errors);
        let instances: Vec<InstanceSecond> = w
            .instances
            .iter()
            .map(|i| InstanceSecond {
                instance: &i.instance,
                side: match i.variant {
                    Variant::A => Side::A,
                    Variant::B => Side::B,
                },
                latency: &i.window.latency,
            })
            .collect();
        // Above 50%, B's instances carry more of the load than A's (as many
        // of each): B would be judged slower for its share alone.
        if w.expected_b <= 0.5 * (w.a.requests + w.b.requests) as f64 {
            self.latency.observe(w.second, &instances);
        }
        self.a_latency.merge(&w.a.latency);
        self.b_latency.merge(&w.b.latency);
        self.split
            .observe_expected(w.a.requests, w.b.requests, w.expected_b);
        self.step_b_requests += w.b.requests;
    }

    /// Records how it ended (event `experiment.STATUS`), writes its report
    /// and forgets its users.
    async fn end(&self, status: ExperimentStatus, decision: serde_json::Value, summary: &str) {
        self.record(status, &format!("experiment.{status}"), decision, summary)
            .await;
        self.report().await;
        self.forget_users().await;
    }

    async fn record(
        &self,
        status: ExperimentStatus,
        kind: &str,
        decision: serde_json::Value,
        summary: &str,
    ) {
        let weight_bp = (self.weight() * 100.0) as i64;
        let started = self.step_started;
        if let Err(e) = self
            .inner
            .store
            .update_experiment(
                self.id,
                status,
                self.step as i64,
                weight_bp,
                started,
                &decision,
                kind,
                summary,
                "sluice",
            )
            .await
        {
            tracing::error!(experiment = self.id, error = %e, "could not record the experiment's decision");
        }
    }

    /// B worked on a copy: its copy goes, and its release is deployed on
    /// the environment's data by a rolling deployment (A serves meanwhile;
    /// a failure there goes back to A as any deployment does).
    async fn promote_onto_data(&mut self, why: &str) -> Outcome {
        let inner = self.inner.clone();
        let decision =
            json!({ "action": "promote", "reason": why, "weight": 100, "at": self.now() });
        self.stop_b().await;
        let summary = format!(
            "experiment {} promoted {} in {}: {why}; B's copy of the data is dropped and the release deployed on the environment's data",
            self.id,
            self.b.name(),
            self.env.name
        );
        self.end(ExperimentStatus::Promoted, decision, &summary)
            .await;
        let deployed = rollout::deploy(
            &inner,
            &self.b,
            &self.env.name,
            DeploymentCause::Experiment,
            "sluice",
            false,
        )
        .await;
        let (status, reason, outcome) = match deployed {
            Ok((id, Outcome::Succeeded)) => (
                DeploymentStatus::Succeeded,
                format!("promoted; deployed on the environment's data by deployment {id}"),
                Outcome::Succeeded,
            ),
            Ok((id, other)) => (
                DeploymentStatus::RolledBack,
                format!("promoted, but deployment {id} on the environment's data did not succeed"),
                other,
            ),
            Err(e) => (
                DeploymentStatus::Failed,
                format!("promoted, but it could not be deployed: {e:#}"),
                Outcome::Failed(format!("{e:#}")),
            ),
        };
        let _ = inner
            .store
            .finish_deployment(self.deployment, status, Some(&reason))
            .await;
        outcome
    }

    /// All requests back to A; B's instances drain and stop, and its copy of the data goes.
    async fn stop_b(&mut self) {
        let inner = self.inner.clone();
        let (service, env) = (self.b.service.clone(), self.env.name.clone());
        self.route.set_split(Some(
            Split::new(0.0, self.sticky.clone(), false)
                .unwrap_or_else(|_| unreachable!("0 is a weight")),
        ));
        // B is the experiment's own instances, even when A runs the same release.
        let b_group: Vec<Live> = inner
            .live_in(&service, &env)
            .into_iter()
            .filter(|l| l.deployment == self.deployment)
            .collect();
        for live in &b_group {
            instances::drain(&inner, &self.route, live).await;
            instances::stop_instance(&inner, &self.route, live).await;
        }
        self.route.set_split(None);
        self.route.set_goals(None);
        if let Ok(copy) = inner
            .layout
            .experiment_data(&service, &env, self.deployment)
        {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(copy)).await;
        }
    }

    /// B becomes the environment's release; A drains and stops.
    async fn promote(&mut self, why: &str) -> Outcome {
        if self.ab.data == AbData::Copy {
            return self.promote_onto_data(why).await;
        }
        let inner = self.inner.clone();
        let (service, env) = (self.b.service.clone(), self.env.name.clone());
        let decision =
            json!({ "action": "promote", "reason": why, "weight": 100, "at": self.now() });
        self.route.set_split(Some(
            Split::new(100.0, self.sticky.clone(), false)
                .unwrap_or_else(|_| unreachable!("100 is a weight")),
        ));
        let a_group: Vec<Live> = inner
            .live_in(&service, &env)
            .into_iter()
            .filter(|l| l.deployment != self.deployment)
            .collect();
        for live in &a_group {
            instances::drain(&inner, &self.route, live).await;
        }
        for live in inner
            .live_in(&service, &env)
            .into_iter()
            .filter(|l| l.deployment == self.deployment)
        {
            live.backend.set_variant(Variant::A);
        }
        self.route.set_split(None);
        self.route.set_goals(None);
        for live in &a_group {
            instances::stop_instance(&inner, &self.route, live).await;
        }
        // B's instances are the environment's own now, for a restart too.
        let _ = inner.store.instances_become_a(self.id).await;
        let _ = inner
            .store
            .set_env_release(&service, &env, &self.b, "sluice", "env.release")
            .await;
        let summary = format!(
            "experiment {} promoted {} in {env}: {why}",
            self.id,
            self.b.name()
        );
        self.end(ExperimentStatus::Promoted, decision, &summary)
            .await;
        let _ = inner
            .store
            .finish_deployment(self.deployment, DeploymentStatus::Succeeded, None)
            .await;
        Outcome::Succeeded
    }

    /// All requests back to A; B drains and stops.
    async fn roll_back(
        &mut self,
        status: ExperimentStatus,
        why: &str,
        decision: serde_json::Value,
    ) -> Outcome {
        let inner = self.inner.clone();
        let env = self.env.name.clone();
        self.stop_b().await;
        let summary = format!(
            "experiment {} {} {} in {env} at {}%: {why}",
            self.id,
            status.as_str().replace('_', " "),
            self.b.name(),
            self.weight()
        );
        self.end(status, decision, &summary).await;
        let _ = inner
            .store
            .finish_deployment(self.deployment, DeploymentStatus::RolledBack, Some(why))
            .await;
        let why = format!(
            "experiment {} {}: {why}",
            self.id,
            status.as_str().replace('_', " ")
        );
        // A person's abort and a test that kept A are no failure of B's.
        if status == ExperimentStatus::Aborted || status == ExperimentStatus::Concluded {
            Outcome::Aborted(why)
        } else {
            Outcome::RolledBack(why)
        }
    }

    async fn report(&self) {
        let side = |requests: u64, errors: u64, latency: &LogHistogram| {
            json!({
                "requests": requests,
                "errors": errors,
                "error_rate": if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
                "p50_ms": latency.quantile(0.5).map(|us| us / 1000.0),
                "p95_ms": latency.quantile(0.95).map(|us| us / 1000.0),
                "p99_ms": latency.quantile(0.99).map(|us| us / 1000.0),
            })
        };
        let report = json!({
            "a": side(self.errors.a_requests, self.errors.a_errors, &self.a_latency),
            "b": side(self.errors.b_requests, self.errors.b_errors, &self.b_latency),
            "steps": self.steps,
            "mode": if self.test().is_some() { "test" } else { "rollout" },
            "goals": self.last_goals,
            "goal_points": self.goal_points,
        });
        let _ = self
            .inner
            .store
            .set_experiment_report(self.id, &report)
            .await;
    }
}

#[cfg(test)]
mod tests {
    //! Experiments against the fake runtime, under load through the real
    //! entry point: one that ramps to B, one that B's errors roll back, and
    //! one steered by people's commands.

    use sluice_store::{
        DeploymentStatus, Experiment, ExperimentCommand, ExperimentStatus, PromotionStatus,
    };

    use crate::Actor;
    use crate::clock::FakeClock;
    use crate::testing::{FakeRuntime, Harness, at_each_action, kill, server_runtime};

    /// How much faster than real time the experiments' clock runs: a
    /// second of an experiment (a step's least duration, a window of the
    /// entry point) passes in 50 ms.
    const SPEED: u32 = 20;

    fn spec(command: &str) -> String {
        spec_with_steps(command, "[50, 100]")
    }

    fn spec_with_steps(command: &str, steps: &str) -> String {
        let prod = format!("  prod:
    deploy: auto
    instances: 1
    listen: 127.0.0.1:0
    strategy:
      ab: {{ steps: {steps}, min_requests: 20, min_duration: 1s, max_step: 10m, metrics: [error_rate] }}
");
        crate::testing::spec(command, &prod)
    }

    /// Runs v1 in prod, then asks for `b` as v2, which becomes an experiment.
    async fn experiment_of(world: &Harness, b: &str) -> Experiment {
        let v1 = world.release(&spec("serve")).await;
        crate::aftermath::ask_for_automatic(&world.cd.inner, &v1, None).await;
        world
            .until("v1 in prod", || async {
                (world.status("prod").await.release == Some(1)).then_some(())
            })
            .await;
        let v2 = world.release(&spec(b)).await;
        crate::aftermath::ask_for_automatic(&world.cd.inner, &v2, None).await;
        until_experiment(world, |x| x.status == ExperimentStatus::Running).await
    }

    async fn until_experiment(world: &Harness, check: impl Fn(&Experiment) -> bool) -> Experiment {
        world
            .until("the experiment", || async {
                world
                    .store()
                    .experiments(Some("shop"), 10)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|x| check(x))
            })
            .await
    }

    #[test]
    fn the_judge_moves_by_the_verdict_the_goals_and_the_step() {
        use super::{Move, Place, asks, judge};
        use sluice_analysis::Action::{Advance, Broken, Hold, Rollback, Wait};
        let at = |step, held, testing| Place {
            step,
            steps: 3,
            held,
            testing,
        };
        let table = [
            // verdict, goal broken, place → move
            (Wait, false, at(0, false, false), Move::Wait),
            (Advance, false, at(0, false, false), Move::Advance),
            (Advance, false, at(1, false, false), Move::Advance),
            (Advance, false, at(2, false, false), Move::Promote),
            // Inconclusive past max_step: held once, then left for a person.
            (Hold, false, at(1, false, false), Move::Hold),
            (Hold, false, at(1, true, false), Move::Wait),
            // A held experiment whose evidence then becomes clear goes on.
            (Advance, false, at(1, true, false), Move::Advance),
            (Rollback, false, at(1, true, false), Move::RollBack),
            (Rollback, false, at(0, false, false), Move::RollBack),
            (Broken, false, at(0, false, false), Move::Broken),
            // Guardrail goals act at every step, in both modes, unless B is rolled back anyway.
            (Advance, true, at(2, false, false), Move::BrokenGoal),
            (Wait, true, at(0, false, true), Move::BrokenGoal),
            (Rollback, true, at(0, false, false), Move::RollBack),
            // At a test's split its primary goal decides.
            (Advance, false, at(2, false, true), Move::TestVerdict),
            (Hold, false, at(2, false, true), Move::TestVerdict),
        ];
        for (verdict, broken_goal, place, expected) in table {
            assert_eq!(
                judge(verdict, broken_goal, place),
                expected,
                "{verdict:?}, goal broken {broken_goal}, {place:?}"
            );
        }
        let (short, long) = (
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(600),
        );
        assert!(asks(false, false, short, long));
        assert!(!asks(true, false, long, short), "paused: no look");
        assert!(!asks(false, true, short, long), "held within max_step");
        assert!(asks(false, true, long, short), "held past max_step again");
    }

    #[tokio::test]
    async fn an_experiment_ramps_to_b_and_its_promotion_is_done() {
        let world = Harness::fast(SPEED).await;
        experiment_of(&world, "serve").await;
        let _load = world.load("prod").await;
        let x = until_experiment(&world, |x| !x.is_open()).await;
        assert_eq!(x.status, ExperimentStatus::Promoted, "{:?}", x.reason);
        world
            .until("v2 in prod", || async {
                (world.status("prod").await.release == Some(2)).then_some(())
            })
            .await;
        assert_eq!(world.answer("prod").await, "v2");
        // Marked done once the deployment that carried it out has ended,
        // which the environment's status may show a moment before.
        world
            .until("the promotion done", || async {
                let promotions = world.store().promotions(Some("shop"), false, 10).await;
                promotions
                    .ok()?
                    .iter()
                    .any(|p| p.release == 2 && p.status == PromotionStatus::Done)
                    .then_some(())
            })
            .await;
    }

    #[tokio::test]
    async fn b_s_errors_roll_it_back_and_open_an_incident() {
        let world = Harness::fast(SPEED).await;
        experiment_of(&world, "fail").await;
        let _load = world.load("prod").await;
        let x = until_experiment(&world, |x| !x.is_open()).await;
        assert_eq!(x.status, ExperimentStatus::RolledBack, "{:?}", x.reason);
        assert_eq!(world.answer("prod").await, "v1", "A serves");
        let deployment = world
            .store()
            .deployment(x.deployment_id.unwrap())
            .await
            .unwrap();
        assert_eq!(deployment.status, DeploymentStatus::RolledBack);
        let incident = world.incident().await;
        assert_eq!(
            incident.trigger_kind,
            sluice_store::IncidentTrigger::Experiment
        );
    }

    /// v1 runs in prod and v2 becomes an experiment under load; the server
    /// is killed at the `nth` start or stop from then on, and started again.
    fn kill_during_experiment(nth: usize) {
        let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let runtime = std::sync::Arc::new(FakeRuntime::default());
        let clock = std::sync::Arc::new(FakeClock::running(SPEED));
        let server = server_runtime();
        let world = server.block_on(async {
            let world = Harness::open(dir.clone(), runtime.clone(), clock.clone()).await;
            // One step, straight to 100%: the kill and the restart are what is tested.
            let v1 = world.release(&spec_with_steps("serve", "[100]")).await;
            crate::aftermath::ask_for_automatic(&world.cd.inner, &v1, None).await;
            world.settled("prod", 1, 1).await;
            let _load = world.load("prod").await;
            let v2 = world.release(&spec_with_steps("serve", "[100]")).await;
            runtime.crash_at(nth);
            crate::aftermath::ask_for_automatic(&world.cd.inner, &v2, None).await;
            tokio::select! {
                _ = runtime.crashed() => {}
                _ = world.settled("prod", 2, 1) => {}
            }
            world
        });
        kill(server, world);
        server_runtime().block_on(async {
            let world = Harness::open(dir, std::sync::Arc::default(), clock).await;
            let _load = world.load_when_served("prod").await;
            world.settled("prod", 2, 1).await;
            let all = world.store().experiments(Some("shop"), 10).await.unwrap();
            assert_eq!(all.len(), 1, "one experiment: {all:?}");
            assert_eq!(
                all[0].status,
                ExperimentStatus::Promoted,
                "{:?}",
                all[0].reason
            );
        });
    }

    #[test]
    fn a_server_killed_at_any_action_of_an_experiment_ends_as_without_the_kill() {
        // B's start, A's stop at the promotion; the third is past the end.
        at_each_action(3, "the experiment", kill_during_experiment);
    }

    #[tokio::test]
    async fn people_pause_resume_and_abort_an_experiment() {
        let world = Harness::fast(SPEED).await;
        let x = experiment_of(&world, "serve").await;
        let ana = Actor {
            name: "ana".into(),
            groups: Vec::new(),
        };
        world
            .cd
            .experiment_command(x.id, ExperimentCommand::Pause, &ana)
            .await
            .unwrap();
        let paused = until_experiment(&world, |x| x.status == ExperimentStatus::Paused).await;
        assert!(
            paused.decisions.contains("paused by ana"),
            "{}",
            paused.decisions
        );
        world
            .cd
            .experiment_command(x.id, ExperimentCommand::Resume, &ana)
            .await
            .unwrap();
        until_experiment(&world, |x| x.decisions.contains("resumed by ana")).await;
        world
            .cd
            .experiment_command(x.id, ExperimentCommand::Abort, &ana)
            .await
            .unwrap();
        let aborted = until_experiment(&world, |x| !x.is_open()).await;
        assert_eq!(aborted.status, ExperimentStatus::Aborted);
        assert_eq!(world.answer("prod").await, "v1", "A serves");
        let refused = world
            .cd
            .experiment_command(x.id, ExperimentCommand::Pause, &ana)
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("takes no more commands"));
        // A person's abort is a decision, not a failure: no incident.
        let open = world
            .store()
            .incidents(Some("shop"), true, 10)
            .await
            .unwrap();
        assert!(open.is_empty(), "{open:?}");
    }
}
