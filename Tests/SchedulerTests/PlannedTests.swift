import HydraRuntime
import HydraSchedulers
import XCTest

/// `planned` on the simulated clock: never worse than `lrtf`, `lrtf` itself where nothing beats it,
/// the optimum where the lower bound shows it, and a new plan only when models drift apart.
final class PlannedTests: XCTestCase {
  func one(_ forward: [Double], _ backward: [Double], steps: Int = 1) -> SimulatedModel {
    SimulatedModel(steps: steps, forwardSeconds: forward, backwardSeconds: backward)
  }

  /// Seeded random jobs: 2 to 9 models of 1 to 4 shards, task times 0.25 to 4 s in quarters, 1 to 3
  /// steps, on 1 to 4 devices.
  func randomWorkloads(count: Int, seed: UInt64) -> [(models: [SimulatedModel], devices: Int)] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in
      let models = (0..<(2 + rng.nextInt(below: 8))).map { _ -> SimulatedModel in
        let k = 1 + rng.nextInt(below: 4)
        let f = (0..<k).map { _ in Double(1 + rng.nextInt(below: 16)) / 4 }
        let b = (0..<k).map { _ in Double(1 + rng.nextInt(below: 16)) / 4 }
        return SimulatedModel(steps: 1 + rng.nextInt(below: 3), forwardSeconds: f, backwardSeconds: b)
      }
      return (models, 1 + rng.nextInt(below: 4))
    }
  }

  func testPlannedIsNeverWorseThanLRTFOnRandomWorkloads() throws {
    var better = 0
    let workloads = randomWorkloads(count: 150, seed: 14)
    for (i, w) in workloads.enumerated() {
      let lrtf = try simulate(w.models, devices: w.devices, scheduler: LRTFScheduler())
      let planned = PlannedScheduler()
      let r = try simulate(w.models, devices: w.devices, scheduler: planned)
      XCTAssertLessThanOrEqual(r.makespan, lrtf.makespan, "workload \(i)")
      // What the search reported is what the run under its plan did.
      if let predicted = planned.lastSearch?.makespan { XCTAssertEqual(r.makespan, predicted, "workload \(i)") }
      if r.makespan < lrtf.makespan { better += 1 }
    }
    // The search must find something somewhere, or it is not searching.
    XCTAssertGreaterThan(better, 0)
  }

  func testWithoutABetterCandidatePlannedMakesLRTFsDecisions() throws {
    // Identical models filling the devices: lrtf reaches the bound (work / devices), so the search
    // stops at once and `planned` hands out exactly lrtf's tasks.
    let models = Array(repeating: one([1, 2], [2, 1], steps: 2), count: 4)
    let lrtf = try simulate(models, devices: 2, scheduler: LRTFScheduler())
    XCTAssertEqual(lrtf.makespan, 24)
    let planned = PlannedScheduler()
    let r = try simulate(models, devices: 2, scheduler: planned)
    XCTAssertNil(planned.weights)
    XCTAssertEqual(r.intervals, lrtf.intervals)
    XCTAssertEqual(planned.lastSearch?.candidates, 0)
  }

  /// Two devices, five one-step models whose forward is all their work (backward 0 s): A and B 3 s,
  /// C, D and E 2 s: the classic case where longest-first is not optimal. lrtf starts A and B
  /// (0..3), then C and D (3..5), then E alone (5..7): 7 s. Work 12 on 2 devices: no schedule ends
  /// before 6, and A + B on one device, C + D + E on the other, end at 6. `planned` must find a
  /// schedule that ends at 6 (its search stops there: nothing can beat the bound).
  func testPlannedFindsTheOptimumLongestFirstMisses() throws {
    let models = [one([3], [0]), one([3], [0]), one([2], [0]), one([2], [0]), one([2], [0])]
    let lrtf = try simulate(models, devices: 2, scheduler: LRTFScheduler())
    XCTAssertEqual(lrtf.makespan, 7)
    let planned = PlannedScheduler()
    let r = try simulate(models, devices: 2, scheduler: planned)
    XCTAssertEqual(r.makespan, 6)
    XCTAssertNotNil(planned.weights)
    XCTAssertEqual(planned.lastSearch?.lrtfMakespan, 7)
  }

  func testSearchBudgetOfNoCandidateIsLRTF() throws {
    let w = randomWorkloads(count: 1, seed: 3)[0]
    let planned = PlannedScheduler(limits: .init(tasks: 0))
    let r = try simulate(w.models, devices: w.devices, scheduler: planned)
    XCTAssertEqual(r.intervals, try simulate(w.models, devices: w.devices, scheduler: LRTFScheduler()).intervals)
    XCTAssertNil(planned.lastSearch?.lrtfMakespan)
  }

  /// The views a runtime would give: every model's first forward ready, estimates scaled per model.
  func views(_ models: [SimulatedModel], scale: (Int) -> Double) -> SchedulerView {
    let ready = models.indices.map { m in
      ReadyTask(
        task: ShardTask(model: m, shard: 0, direction: .forward, step: 0),
        estimatedSeconds: models[m].forwardSeconds[0] * scale(m),
        remainingSeconds: models[m].totalSeconds * scale(m), shardCount: models[m].shardCount)
    }
    return SchedulerView(
      now: 0, ready: ready, freeDevices: Array(0..<models.count), deviceCount: models.count,
      modelCount: models.count)
  }

  func testEstimatesThatScaleTogetherKeepThePlanAndDriftApartReplans() throws {
    let models = (0..<10).map { m in one([1 + Double(m % 3)], [2], steps: 3) }
    let same = PlannedScheduler()
    try same.plan(Workload(models: models, devices: 3))
    // Every task 2.5x slower than planned: the same order, no new plan.
    _ = same.schedule(views(models, scale: { _ in 2.5 }))
    XCTAssertEqual(same.replans, 0)

    let drift = PlannedScheduler()
    try drift.plan(Workload(models: models, devices: 3))
    // Models 0 and 1 three times slower than the rest (a tenth of ten models is 1): a new plan.
    _ = drift.schedule(views(models, scale: { $0 < 2 ? 3 : 1 }))
    XCTAssertEqual(drift.replans, 1)
    XCTAssertEqual(drift.report["replans"], 1)
    XCTAssertEqual(drift.report["last_replan_at_seconds"], 0, "the view's now")
    XCTAssertEqual(same.report["replans"], 0)
    XCTAssertNil(same.report["last_replan_at_seconds"])
    // A re-plan runs inside a decision: its search gets a twentieth of the task bound. 10 models
    // x 3 steps x 2 tasks = 60 simulated tasks a run: a bound of 180 lets the first plan simulate
    // lrtf and more; the re-plan's 9 cannot simulate one run, so it searches nothing.
    let bounded = PlannedScheduler(limits: .init(tasks: 180))
    try bounded.plan(Workload(models: models, devices: 3))
    XCTAssertNotNil(bounded.lastSearch?.lrtfMakespan)
    _ = bounded.schedule(views(models, scale: { $0 < 2 ? 3 : 1 }))
    XCTAssertEqual(bounded.replans, 1)
    XCTAssertEqual(bounded.replanLimits.tasks, 9)
    XCTAssertNil(bounded.lastSearch?.lrtfMakespan)
    XCTAssertLessThanOrEqual(PlannedScheduler().replanLimits.seconds, 0.2)
    // Within the tolerance (10 % apart): nothing.
    let near = PlannedScheduler()
    try near.plan(Workload(models: models, devices: 3))
    _ = near.schedule(views(models, scale: { $0 < 2 ? 1.1 : 1 }))
    XCTAssertEqual(near.replans, 0)
  }
}
