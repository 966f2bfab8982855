import Foundation
import HydraPluginAPI

/// `planned`: Sharded-LRTF with per-model priorities found before the run by local search over the
/// simulator, then kept up to date when measured task times drift from the plan's.
///
/// A priority is a weight on the model's estimated remaining time (`ReadyOrder.weightedRemaining`):
/// the ready task of the largest `remainingSeconds x weight` goes first. With every weight 1 that is
/// exactly `lrtf`, which is where the search starts: a candidate replaces the best so far only when
/// its simulated makespan is strictly shorter, so on the simulator `planned` is never worse than
/// `lrtf` (and with no better candidate it makes `lrtf`'s very decisions). Weights rather than a
/// fixed order, because a weight keeps LRTF's self-correction (a model that fell behind rises on its
/// own) and survives every estimate scaling by one factor (the machine is faster than planned).
///
/// At run time it watches, for each task it hands out, the ratio of the runtime's estimate (measured
/// times once there are some) to the plan's, and after as many tasks as there are models checks
/// them all. Ratios that all move together change nothing; when models drift apart (a model's
/// ratio off the job's geometric mean by more than `driftTolerance`, for a tenth of the models), it
/// plans again from what is left, with each model's times scaled by its ratio (Saturn's
/// introspection), at most `maxReplans` times.
public final class PlannedScheduler: Scheduler {
  public let name = "planned"
  public let preferResident: Bool
  public let limits: PlanSearch.Limits
  public let driftTolerance: Double
  public let maxReplans: Int

  /// The weights of the plan in force; nil: every weight 1 (`lrtf`).
  public private(set) var weights: ModelWeights?
  /// The last search's outcome.
  public private(set) var lastSearch: PlanSearch.Outcome?
  public private(set) var replans = 0
  /// The search before the run, and when the latest re-plan happened (seconds into the run).
  public private(set) var firstSearch: PlanSearch.Outcome?
  private var lastReplanAt: Double?

  /// What the plan in force assumed: per model, its task times and the steps it had left.
  private var planned: [SimulatedModel] = []
  private var devices = 0
  private var bandwidth: Double?
  /// Per model: the latest ratio of estimated to planned task seconds (0: none seen since the
  /// plan), and the steps it has left as of its latest task handed out.
  private var ratio: [Double] = []
  private var stepsLeft: [Int] = []
  private var logRatioSum = 0.0
  private var ratioCount = 0
  /// Tasks observed since the models were last checked for drift: they are checked all at once
  /// after as many tasks as there are models (O(1) a task, amortised).
  private var sinceCheck = 0

  public init(
    preferResident: Bool = true, limits: PlanSearch.Limits = .init(), driftTolerance: Double = 0.25,
    maxReplans: Int = 4
  ) {
    self.preferResident = preferResident
    self.limits = limits
    self.driftTolerance = driftTolerance
    self.maxReplans = maxReplans
  }

  public func plan(_ workload: Workload) throws {
    try adopt(workload, limits: limits)
    firstSearch = lastSearch
  }

  /// For `summary.json`: the plan before the run (simulated makespans of `lrtf` and of the plan,
  /// candidates tried) and the re-plans (how many, when the latest was, its simulated makespan).
  public var report: [String: Double] {
    var r: [String: Double] = ["replans": Double(replans)]
    if let first = firstSearch {
      r["plan_candidates"] = Double(first.candidates)
      if let m = first.lrtfMakespan { r["plan_lrtf_makespan_seconds"] = m }
      if let m = first.makespan { r["plan_makespan_seconds"] = m }
    }
    if let at = lastReplanAt {
      r["last_replan_at_seconds"] = at
      if let m = lastSearch?.makespan { r["last_replan_makespan_seconds"] = m }
    }
    return r
  }

  /// A re-plan runs inside a scheduling decision, while devices wait for it: its search gets a
  /// twentieth of the tasks and time of the first (at most 0.2 s by default), not the whole bound.
  public var replanLimits: PlanSearch.Limits {
    PlanSearch.Limits(
      tasks: max(limits.tasks / 20, 1), candidates: limits.candidates, seconds: min(limits.seconds / 20, 0.2))
  }

  private func adopt(_ workload: Workload, limits: PlanSearch.Limits) throws {
    let outcome = try PlanSearch.search(workload, preferResident: preferResident, limits: limits)
    lastSearch = outcome
    weights = outcome.weights.map(ModelWeights.init)
    planned = workload.models
    devices = workload.devices
    bandwidth = workload.bandwidth
    ratio = Array(repeating: 0, count: planned.count)
    stepsLeft = planned.map(\.steps)
    logRatioSum = 0
    ratioCount = 0
    sinceCheck = 0
  }

  private var order: ReadyOrder {
    weights.map { ReadyOrder.weightedRemaining(residentFirst: preferResident, weights: $0) }
      ?? .longestRemaining(residentFirst: preferResident)
  }

  public func schedule(_ view: SchedulerView) -> [Assignment] {
    let answer = assignInOrder(order, view)
    observe(answer, view)
    return answer
  }

  /// Records the estimate of each task handed out against the plan's, and plans again when models
  /// drifted apart. O(assignments), plus the drifted models, per decision.
  private func observe(_ answer: [Assignment], _ view: SchedulerView) {
    guard !planned.isEmpty else { return }
    for a in answer {
      let m = a.task.model
      guard m < planned.count, let t = view.readyTask(ofModel: m) else { continue }
      let model = planned[m]
      guard a.task.shard < model.shardCount else { continue }
      let p = a.task.direction == .forward ? model.forwardSeconds[a.task.shard] : model.backwardSeconds[a.task.shard]
      guard p > 0, t.estimatedSeconds > 0, t.estimatedSeconds.isFinite else { continue }
      let r = t.estimatedSeconds / p
      if ratio[m] > 0 {
        logRatioSum -= log(ratio[m])
      } else {
        ratioCount += 1
      }
      ratio[m] = r
      logRatioSum += log(r)
      let step = model.stepSeconds * r
      if step > 0 { stepsLeft[m] = max(Int((t.remainingSeconds / step - 1e-9).rounded(.up)), 1) }
      sinceCheck += 1
    }
    guard replans < maxReplans, sinceCheck >= planned.count else { return }
    sinceCheck = 0
    let off = planned.indices.reduce(0) { $0 + (isOff($1) ? 1 : 0) }
    if off >= max(1, planned.count / 10) { replan(view) }
  }

  private func isOff(_ m: Int) -> Bool {
    guard ratio[m] > 0, ratioCount > 0 else { return false }
    return abs(log(ratio[m]) - logRatioSum / Double(ratioCount)) > log(1 + driftTolerance)
  }

  /// Plans again for what is left: each model's times scaled by its ratio to the mean (the scale
  /// itself does not change a weighted order), finished models with no steps.
  private func replan(_ view: SchedulerView) {
    let mean = exp(logRatioSum / Double(max(ratioCount, 1)))
    let models = planned.indices.map { m -> SimulatedModel in
      var model = planned[m]
      let f = ratio[m] > 0 ? ratio[m] / mean : 1
      model.forwardSeconds = model.forwardSeconds.map { $0 * f }
      model.backwardSeconds = model.backwardSeconds.map { $0 * f }
      // The process's first step is behind (or under way): its fresh-memory times are paid.
      model.firstForwardSeconds = []
      model.firstBackwardSeconds = []
      model.steps = view.finished.contains(m) ? 0 : stepsLeft[m]
      return model
    }
    let old = order
    do {
      try adopt(Workload(models: models, devices: devices, bandwidth: bandwidth), limits: replanLimits)
      replans += 1
      lastReplanAt = view.now
      if old != order { view.readyIndex?.forget(old) }
    } catch {
      // The workload came from the plan's own (valid) models: keep the plan in force.
      replans = maxReplans
    }
  }
}

/// The local search behind `planned`: weights per model, each candidate judged by a simulation of
/// the workload, from `lrtf` (every weight 1) on.
public enum PlanSearch {
  /// Bounds on the search, so that planning stays a small part of `hydra-mpi plan` even at 4,096
  /// models on 1,024 devices: simulated tasks over all candidates, candidates, and wall seconds (the
  /// one bound that depends on the machine; small workloads never reach it).
  public struct Limits: Sendable, Equatable {
    public var tasks: Int
    public var candidates: Int
    public var seconds: Double
    public init(tasks: Int = 1_500_000, candidates: Int = 48, seconds: Double = 4) {
      self.tasks = tasks
      self.candidates = candidates
      self.seconds = seconds
    }
  }

  public struct Outcome: Sendable, Equatable {
    /// The best weights; nil when none beat `lrtf` (or there was no room to search).
    public var weights: [Double]?
    /// Simulated makespans of `lrtf` and of the best candidate (equal when weights is nil; nil
    /// when nothing was simulated).
    public var lrtfMakespan: Double?
    public var makespan: Double?
    /// Candidates simulated besides `lrtf`.
    public var candidates: Int
  }

  public static func search(_ workload: Workload, preferResident: Bool = true, limits: Limits = .init()) throws
    -> Outcome
  {
    let models = workload.models
    let tasksPerRun = models.reduce(0) { $0 + $1.steps * 2 * $1.shardCount }
    let allowed = min(limits.candidates, limits.tasks / max(tasksPerRun, 1))
    guard allowed >= 1, models.count >= 2, workload.devices >= 1 else {
      return Outcome(weights: nil, lrtfMakespan: nil, makespan: nil, candidates: 0)
    }
    let start = DispatchTime.now().uptimeNanoseconds
    func run(_ weights: [Double]?) throws -> SimulationResult {
      try simulate(
        models, devices: workload.devices, scheduler: WeightedLRTF(weights, preferResident: preferResident),
        bandwidth: workload.bandwidth)
    }
    let lrtf = try run(nil)
    // `best` only ever improves strictly (so nil weights, lrtf itself, unless something beats it);
    // the walk also takes moves that tie, to cross the plateaus a makespan has.
    var best = lrtf, bestWeights: [Double]? = nil
    var walk = lrtf, walkWeights = Array(repeating: 1.0, count: models.count)
    // No schedule beats the longest model alone, nor the work spread evenly.
    let bound = max(
      models.map(\.totalSeconds).max() ?? 0, models.reduce(0) { $0 + $1.totalSeconds } / Double(workload.devices))
    var tried = 0
    var rng = SplitMix64(seed: 0x504C_414E)
    let structured = structuredCandidates(models)
    while tried < allowed, best.makespan > bound * (1 + 1e-9) {
      if Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 > limits.seconds { break }
      var w = walkWeights
      let move = rng.nextInt(below: 10)
      if tried < structured.count {
        w = structured[tried]
      } else if move < 4 {
        // Insert model i just before or after model j in the order at the start (keys: total
        // seconds x weight), leaving the others where they are.
        let i = rng.nextInt(below: models.count)
        var j = rng.nextInt(below: models.count - 1)
        if j >= i { j += 1 }
        let key = models[j].totalSeconds * w[j]
        if models[i].totalSeconds > 0 && key > 0 {
          w[i] = key * (rng.nextInt(below: 2) == 0 ? 1.0001 : 0.9999) / models[i].totalSeconds
        }
      } else if move < 7, let m = lastToFinish(walk) {
        // The model that ends the schedule: start its work earlier.
        w[m] *= 1.05 + 0.55 * rng.nextUnit()
      } else {
        let m = rng.nextInt(below: models.count)
        let f = exp(0.05 + 0.65 * rng.nextUnit())
        w[m] = rng.nextInt(below: 2) == 0 ? w[m] * f : w[m] / f
      }
      tried += 1
      let r = try run(w)
      if r.makespan <= walk.makespan {
        walk = r
        walkWeights = w
      }
      if r.makespan < best.makespan {
        best = r
        bestWeights = w
      }
    }
    return Outcome(weights: bestWeights, lrtfMakespan: lrtf.makespan, makespan: best.makespan, candidates: tried)
  }

  /// Whole-job variations to try first: favour models with more shards (a longer chain per step has
  /// less slack), or with longer tasks (LPT at the task level), or shorter ones.
  static func structuredCandidates(_ models: [SimulatedModel]) -> [[Double]] {
    let meanTask = models.map { $0.stepSeconds / Double(2 * $0.shardCount) }
    let overall = meanTask.reduce(0, +) / Double(max(meanTask.count, 1))
    guard overall > 0 else { return [] }
    let candidates = [
      models.map { Double($0.shardCount).squareRoot() },
      meanTask.map { ($0 / overall).squareRoot() },
      meanTask.map { ($0 > 0 ? overall / $0 : 1).squareRoot() },
    ]
    // Equal weights are lrtf's order: nothing to try.
    return candidates.filter { w in w.contains { $0 != w[0] } }
  }

  /// The model of the task that ends last (the lower index on a tie).
  static func lastToFinish(_ r: SimulationResult) -> Int? {
    var best: TaskInterval?
    for i in r.intervals where best == nil || i.end > best!.end || (i.end == best!.end && i.model < best!.model) {
      best = i
    }
    return best?.model
  }
}

/// A candidate of the search: `lrtf`'s policy ordered by weighted remaining time (nil: `lrtf`).
final class WeightedLRTF: Scheduler {
  let name = "planned"
  let order: ReadyOrder
  init(_ weights: [Double]?, preferResident: Bool) {
    order =
      weights.map { ReadyOrder.weightedRemaining(residentFirst: preferResident, weights: ModelWeights($0)) }
      ?? .longestRemaining(residentFirst: preferResident)
  }
  func schedule(_ view: SchedulerView) -> [Assignment] { assignInOrder(order, view) }
}
