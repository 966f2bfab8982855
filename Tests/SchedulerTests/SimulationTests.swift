import HydraRuntime
import HydraSchedulers
import HydraSelection
import XCTest

/// Schedulers on the simulated clock: makespans computed by hand, utilisation, and the trace's shape.
final class SimulationTests: XCTestCase {
  func one(_ forward: [Double], _ backward: [Double], steps: Int = 1) -> SimulatedModel {
    SimulatedModel(steps: steps, forwardSeconds: forward, backwardSeconds: backward)
  }

  /// 2 devices; one shard each: m0 = fwd 1 + bwd 1, m1 = 1 + 1, m2 = 2 + 2. Work 8, so no schedule
  /// beats 8 / 2 = 4.
  var threeModels: [SimulatedModel] { [one([1], [1]), one([1], [1]), one([2], [2])] }

  func testLRTFIsOptimalWhereFIFOAndRoundRobinAreNot() throws {
    // lrtf: t0: m2 f (rem 4) -> d0 [0,2], m0 f (rem 2, before m1 by index) -> d1 [0,1].
    // t1: m1 f (rem 2) before m0 b (rem 1) -> d1 [1,2]. t2: m2 b (rem 2) -> d0 (holds its shard)
    // [2,4], m0 b (rem 1, tie with m1 by index) -> d1 [2,3]. t3: m1 b -> d1 [3,4]. Makespan 4 = optimum.
    let lrtf = try simulate(threeModels, devices: 2, scheduler: LRTFScheduler())
    XCTAssertEqual(lrtf.makespan, 4)
    XCTAssertEqual(lrtf.utilisation, 1)
    XCTAssertEqual(lrtf.intervals(device: 0).map(\.model), [2, 2])
    XCTAssertEqual(lrtf.intervals(device: 1).map(\.model), [0, 1, 0, 1])

    // fifo: t0: m0 f -> d0 [0,1], m1 f -> d1 [0,1]. t1: m2 f (ready since 0) -> d0 [1,3]; m0 b
    // (its shard is on busy d0) -> d1 [1,2]. t2: m1 b -> d1 [2,3]. t3: m2 b -> d0 [3,5]. Makespan 5.
    let fifo = try simulate(threeModels, devices: 2, scheduler: FIFOScheduler())
    XCTAssertEqual(fifo.makespan, 5)
    XCTAssertEqual(fifo.intervals(device: 0).map(\.start), [0, 1, 3])
    XCTAssertEqual(fifo.utilisation, 8.0 / 10)

    // round-robin: t0: m0 -> d0, m1 -> d1 (next = 2). t1: m2 f -> d0 [1,3] (next = 0); m0 b -> d1
    // [1,2] (next = 1). t2: m1 b -> d1 [2,3]. t3: m2 b -> d0 [3,5]. Makespan 5.
    let rr = try simulate(threeModels, devices: 2, scheduler: RoundRobinScheduler())
    XCTAssertEqual(rr.makespan, 5)
    XCTAssertEqual(rr.intervals.map(\.model), [0, 1, 2, 0, 1, 2])

    // Baselines: one model at a time, so the sum of all task times, 8.
    for s: Scheduler in [SequentialScheduler(), ModelParallelScheduler()] {
      let r = try simulate(threeModels, devices: 2, scheduler: s)
      XCTAssertEqual(r.makespan, 8, s.name)
      XCTAssertEqual(r.intervals.map(\.model), [0, 0, 1, 1, 2, 2], s.name)
      XCTAssertEqual(r.busySeconds, [8, 0], s.name)  // one shard: device 0 only, for both
    }
  }

  /// Evaluations take the device that ended the step, and the model waits for them.
  /// 1 device, 2 models of one shard (fwd 1, bwd 1), 2 steps each; m0 evaluates after every step
  /// (3 s), m1 only after its last (0.5 s). fifo (longest ready first, then model index): t0 m0 f
  /// [0,1]; t1 m1 f (ready since 0) before m0 b (since 1) [1,2]; t2 m0 b [2,3], then m0's eval
  /// [3,6] keeps the device; t6 m1 b (since 2) [6,7], no eval (m1's every 0: only the last);
  /// t7 m0 f (since 6) [7,8]; m1 f (since 7) [8,9]; m0 b [9,10] and m0's last eval [10,13];
  /// m1 b [13,14] and m1's eval [14,14.5]. Makespan 14.5; m0 ends at 13.
  func testEvaluationsHoldTheDeviceAndTheModel() throws {
    var m0 = one([1], [1], steps: 2)
    m0.evaluationSeconds = 3
    m0.evalEvery = 1
    var m1 = one([1], [1], steps: 2)
    m1.evaluationSeconds = 0.5
    XCTAssertEqual(m0.evaluationCount, 2)
    XCTAssertEqual(m1.evaluationCount, 1)
    XCTAssertEqual(m0.totalSeconds, 4 + 6)
    let r = try simulate([m0, m1], devices: 1, scheduler: FIFOScheduler())
    XCTAssertEqual(r.makespan, 14.5)
    XCTAssertEqual(r.finishTimes, [13, 14.5])
    XCTAssertEqual(r.intervals.map(\.start), [0, 1, 2, 6, 7, 8, 9, 13])
    XCTAssertEqual(r.intervals.map(\.model), [0, 1, 0, 1, 0, 1, 0, 1])
    XCTAssertEqual(
      r.evaluations,
      [
        EvaluationInterval(device: 0, model: 0, step: 1, start: 3, end: 6),
        EvaluationInterval(device: 0, model: 0, step: 2, start: 10, end: 13),
        EvaluationInterval(device: 0, model: 1, step: 2, start: 14, end: 14.5),
      ])
    // Tasks and evaluations: the device never idles.
    XCTAssertEqual(r.busySeconds, [8 + 6.5])
    XCTAssertEqual(r.utilisation, 1)
    // evalEvery 3 over 7 steps: after steps 3, 6 and 7.
    var m2 = one([1], [1], steps: 7)
    m2.evaluationSeconds = 1
    m2.evalEvery = 3
    XCTAssertEqual(m2.evaluationCount, 3)
    let alone = try simulate([m2], devices: 1, scheduler: LRTFScheduler())
    XCTAssertEqual(alone.evaluations.map(\.step), [3, 6, 7])
    XCTAssertEqual(alone.makespan, 14 + 3)
  }

  /// First-step times (a process's first step maps its buffers afresh) hold for step 0 only, and
  /// count in the remaining time that orders lrtf. 1 device: mA has 2 steps of one shard, fwd 1,
  /// bwd 1, but 10 and 10 in its first step; mB 2 steps of fwd 2, bwd 2. mA's remaining time at the
  /// start is 10 + 10 + 2 = 22 against mB's 8, so lrtf runs mA first: mA f [0,10], mA b [10,20]
  /// (its remaining 12 > 8); now mA has 2 left against mB's 8: mB f [20,22], b [22,24], f [24,26].
  /// At 26 both have 2 left and the lower index goes first: mA f [26,27]; then mB's 2 > mA's 1:
  /// mB b [27,29], mA b [29,30]. Without the first-step times mA's remaining time would be 4 < 8
  /// and mB would go first.
  func testFirstStepTimesHoldForTheFirstStepOnly() throws {
    var a = one([1], [1], steps: 2)
    a.firstForwardSeconds = [10]
    a.firstBackwardSeconds = [10]
    let b = one([2], [2], steps: 2)
    XCTAssertEqual(a.totalSeconds, 22)
    XCTAssertEqual(a.firstStepSeconds, 20)
    let r = try simulate([a, b], devices: 1, scheduler: LRTFScheduler())
    XCTAssertEqual(r.intervals.map(\.model), [0, 0, 1, 1, 1, 0, 1, 0])
    XCTAssertEqual(r.intervals.map(\.start), [0, 10, 20, 22, 24, 26, 27, 29])
    XCTAssertEqual(r.finishTimes, [30, 29])
    XCTAssertEqual(r.makespan, 30)
    var plain = a
    plain.firstForwardSeconds = []
    plain.firstBackwardSeconds = []
    XCTAssertEqual(try simulate([plain, b], devices: 1, scheduler: LRTFScheduler()).intervals.first?.model, 1)
    // Wrong counts are refused.
    var bad = a
    bad.firstBackwardSeconds = [1, 2]
    XCTAssertThrowsError(try simulate([bad], devices: 1, scheduler: LRTFScheduler()))
    bad.firstBackwardSeconds = [-1]
    XCTAssertThrowsError(try simulate([bad], devices: 1, scheduler: LRTFScheduler()))
  }

  /// Checkpoint writes hold the device after the step's evaluation. 1 device, one shard (fwd 1,
  /// bwd 1), 3 steps, an evaluation after every step (1 s), a checkpoint every 2 steps and after
  /// the last (0.5 s): step 1 [0,2], eval [2,3]; step 2 [3,5], eval [5,6], checkpoint [6,6.5];
  /// step 3 [6.5,8.5], eval [8.5,9.5], checkpoint [9.5,10].
  func testCheckpointsHoldTheDeviceAfterTheEvaluation() throws {
    var m = one([1], [1], steps: 3)
    m.evaluationSeconds = 1
    m.evalEvery = 1
    m.checkpointSeconds = 0.5
    m.checkpointEvery = 2
    XCTAssertEqual(m.checkpointCount, 2)
    XCTAssertEqual(m.totalSeconds, 6 + 3 + 1)
    let r = try simulate([m], devices: 1, scheduler: LRTFScheduler())
    XCTAssertEqual(r.makespan, 10)
    XCTAssertEqual(r.intervals.map(\.start), [0, 1, 3, 4, 6.5, 7.5])
    XCTAssertEqual(
      r.checkpoints,
      [
        EvaluationInterval(device: 0, model: 0, step: 2, start: 6, end: 6.5),
        EvaluationInterval(device: 0, model: 0, step: 3, start: 9.5, end: 10),
      ])
    XCTAssertEqual(r.evaluations.map(\.end), [3, 6, 9.5])
    XCTAssertEqual(r.busySeconds, [10])
    // Without evaluations the checkpoint starts when the step ends.
    m.evaluationSeconds = 0
    let alone = try simulate([m], devices: 1, scheduler: LRTFScheduler())
    XCTAssertEqual(alone.checkpoints.map(\.start), [4, 6.5])
    XCTAssertEqual(alone.makespan, 7)
  }

  /// Selection policies run on the simulated clock. 3 models of one shard (fwd 1, bwd 1), 3 steps,
  /// one rung at step 1 (min_steps 1, eta 3: 3 is not below 3 steps), 1 device, fifo (longest
  /// ready first, then model index): m0 f [0,1], m1 f [1,2], m2 f [2,3], m0 b [3,4], m1 b [4,5],
  /// m2 b [5,6]; each model reaches the rung at the end of its backward.
  func testSelectionPoliciesOnTheSimulatedClock() throws {
    let models = [one([1], [1], steps: 3), one([1], [1], steps: 3), one([1], [1], steps: 3)]
    let setup = SelectionSetup(models: 3, rungSteps: [[1], [1], [1]], reductionFactor: 3)
    // sha: m0 and m1 wait at the rung; when m2 arrives (6 s) the best 1 of 3 goes on: m2 (score
    // -m: the higher index the better); m0 and m1 stop there. m2's 2 more steps: [6,10].
    let sha = try simulate(
      models, devices: 1, scheduler: FIFOScheduler(),
      selection: SimulatedSelection(policy: SuccessiveHalving(), setup: setup) { m, _ in -Double(m) })
    XCTAssertEqual(sha.makespan, 10)
    XCTAssertEqual(sha.finishTimes, [6, 6, 10])
    XCTAssertEqual(sha.stepsDone, [1, 1, 3])
    XCTAssertEqual(sha.intervals.filter { $0.start >= 6 }.map(\.model), [2, 2, 2, 2])
    // asha, scores m (lower index better): m0 arrives first and goes on (4 s); m1 (5 s) and m2
    // (6 s) are not in the best 1/3 of what the rung has seen, and stop. m0's forward was ready at
    // 4 but m1 b (ready since 2) and m2 b (since 3) came first: m0's 2 more steps [6,10].
    let asha = try simulate(
      models, devices: 1, scheduler: FIFOScheduler(),
      selection: SimulatedSelection(policy: AsyncSuccessiveHalving(), setup: setup) { m, _ in Double(m) })
    XCTAssertEqual(asha.makespan, 10)
    XCTAssertEqual(asha.finishTimes, [10, 5, 6])
    XCTAssertEqual(asha.stepsDone, [3, 1, 1])
    // Without selection every model trains its 3 steps: 18 s.
    XCTAssertEqual(try simulate(models, devices: 1, scheduler: FIFOScheduler()).makespan, 18)
    // A rung evaluation takes the device: with 0.5 s evaluations (after step 1, the rung, and after
    // the last), sha's rung fills at 6 + 3 x 0.5 = 7.5; m2's 2 steps and last evaluation: 12.
    var evaluated = models
    for i in evaluated.indices { evaluated[i].evaluationSeconds = 0.5 }
    let shaEvaluated = try simulate(
      evaluated, devices: 1, scheduler: FIFOScheduler(),
      selection: SimulatedSelection(policy: SuccessiveHalving(), setup: setup) { m, _ in -Double(m) })
    XCTAssertEqual(shaEvaluated.makespan, 12)
    XCTAssertEqual(shaEvaluated.evaluations.map(\.model), [0, 1, 2, 2])
  }

  /// 2 devices, 2 shards, 1 step: m0 fwd [1, 2] bwd [3, 4] (10 s), m1 fwd [1, 1] bwd [1, 1] (4 s).
  var twoShards: [SimulatedModel] { [one([1, 2], [3, 4]), one([1, 1], [1, 1])] }

  func testBaselinesOnPinnedShards() throws {
    // model-parallel: shard s on device s % 2, one model at a time: makespan 10 + 4 = 14; device 0
    // runs the shard-0 tasks (1 + 3 + 1 + 1 = 6), device 1 the shard-1 tasks (2 + 4 + 1 + 1 = 8).
    let mp = try simulate(twoShards, devices: 2, scheduler: ModelParallelScheduler())
    XCTAssertEqual(mp.makespan, 14)
    XCTAssertEqual(mp.busySeconds, [6, 8])
    XCTAssertEqual(mp.utilisation, 0.5)
    XCTAssertEqual(mp.intervals.map(\.device), [0, 1, 1, 0, 0, 1, 1, 0])
    XCTAssertEqual(mp.intervals.map(\.start), [0, 1, 3, 7, 10, 11, 12, 13])

    let seq = try simulate(twoShards, devices: 2, scheduler: SequentialScheduler())
    XCTAssertEqual(seq.makespan, 14)
    XCTAssertEqual(seq.busySeconds, [14, 0])

    // lrtf: no schedule beats m0's own chain, 10. t0: m0 f0 -> d0, m1 f0 -> d1. t1: m0 f1 (rem 9)
    // -> d0 (its input) [1,3]; m1 f1 -> d1 [1,2]. t2: m1 b1 -> d1 [2,3]. t3: m0 b1 -> d0 [3,7];
    // m1 b0 -> d1 [3,4]. t7: m0 b0 -> d0 [7,10]. Makespan 10; m0 never leaves device 0.
    let lrtf = try simulate(twoShards, devices: 2, scheduler: LRTFScheduler())
    XCTAssertEqual(lrtf.makespan, 10)
    XCTAssertEqual(lrtf.intervals.filter { $0.model == 0 }.map(\.device), [0, 0, 0, 0])
    XCTAssertEqual(lrtf.busySeconds, [10, 4])
  }

  func testViewsTheSimulatorBuilds() throws {
    var views: [SchedulerView] = []
    let inner = ModelParallelScheduler()
    let recorder = Scripted { v in
      views.append(v)
      return inner.schedule(v)
    }
    _ = try simulate(twoShards, devices: 2, scheduler: recorder)
    // model-parallel on `twoShards`: decisions at 0, 1, 3, 7 (m0's chain), then 10..13 (m1's).
    XCTAssertEqual(views.map(\.now), [0, 1, 3, 7, 10, 11, 12, 13])
    func m0(_ v: SchedulerView) -> ReadyTask { v.ready.first { $0.task.model == 0 }! }
    XCTAssertEqual(views[0].ready.map(\.remainingSeconds), [10, 4])
    XCTAssertEqual(views[0].freeDevices, [0, 1])
    // t3: m0's backward of shard 1 (4 + 3 s left), shard 1 ran forward on device 1.
    XCTAssertEqual(
      m0(views[2]),
      ReadyTask(
        task: ShardTask(model: 0, shard: 1, direction: .backward, step: 0), estimatedSeconds: 4,
        remainingSeconds: 7, state: .device(1), lastDevice: 1, readySince: 3, shardCount: 2))
    // t7: shard 0's state is on device 0, its input (from shard 1's backward) on device 1.
    XCTAssertEqual(m0(views[3]).state, .device(0))
    XCTAssertEqual(m0(views[3]).lastDevice, 1)
    XCTAssertEqual(m0(views[3]).remainingSeconds, 3)
    // t10: m0 done; m1 has waited since 0.
    XCTAssertEqual(views[4].finished, [0])
    XCTAssertEqual(views[4].ready.map(\.readySince), [0])
    XCTAssertEqual(views[4].ready.map(\.state), [.host])
    XCTAssertTrue(views.allSatisfy { $0.deviceCount == 2 && $0.modelCount == 2 })

    // Remaining time counts the steps still to come: 3 steps of fwd 1 + bwd 2 = 9 s.
    views = []
    _ = try simulate([one([1], [2], steps: 3)], devices: 1, scheduler: recorder)
    XCTAssertEqual(views.map { $0.ready[0].remainingSeconds }, [9, 8, 6, 5, 3, 2])
    XCTAssertEqual(views.map { $0.ready[0].task.step }, [0, 0, 1, 1, 2, 2])
  }

  /// 8 equal models, 4 shards (fwd 1 s, bwd 2 s each), 3 steps: 36 s a model, 288 s in all; the
  /// ideal on 2 devices is 144 s.
  var eightModels: [SimulatedModel] {
    Array(repeating: one([1, 1, 1, 1], [2, 2, 2, 2], steps: 3), count: 8)
  }

  func testManyEqualModelsKeepDevicesBusy() throws {
    let lrtf = try simulate(eightModels, devices: 2, scheduler: LRTFScheduler())
    XCTAssertGreaterThanOrEqual(lrtf.utilisation, 0.95)
    XCTAssertLessThanOrEqual(lrtf.makespan, 144 * 1.05)
    XCTAssertGreaterThanOrEqual(lrtf.makespan, 144)

    let mp = try simulate(eightModels, devices: 2, scheduler: ModelParallelScheduler())
    XCTAssertEqual(mp.makespan, 288)
    XCTAssertEqual(mp.utilisation, 0.5)
    XCTAssertGreaterThanOrEqual(mp.makespan / lrtf.makespan, 1.8)  // the goal

    let seq = try simulate(eightModels, devices: 2, scheduler: SequentialScheduler())
    XCTAssertEqual(seq.makespan, 288)
    XCTAssertEqual(seq.busySeconds, [288, 0])

    // 4 devices: model-parallel still 288 (utilisation 1/4); lrtf near 72.
    let mp4 = try simulate(eightModels, devices: 4, scheduler: ModelParallelScheduler())
    XCTAssertEqual(mp4.makespan, 288)
    XCTAssertEqual(mp4.utilisation, 0.25)
    XCTAssertEqual(mp4.busySeconds, [72, 72, 72, 72])
    let lrtf4 = try simulate(eightModels, devices: 4, scheduler: LRTFScheduler())
    XCTAssertGreaterThanOrEqual(lrtf4.utilisation, 0.95)
  }

  func testRandomIsSeededAndDeterministic() throws {
    let a = try simulate(eightModels, devices: 2, scheduler: RandomScheduler(seed: 42))
    let b = try simulate(eightModels, devices: 2, scheduler: RandomScheduler(seed: 42))
    XCTAssertEqual(a.intervals, b.intervals)
    let orders = try (1...6).map { seed in
      try simulate(eightModels, devices: 2, scheduler: RandomScheduler(seed: UInt64(seed))).intervals.map(\.model)
    }
    XCTAssertGreaterThan(Set(orders).count, 1, "different seeds should give different schedules")
  }

  /// Every task of every model exactly once per step, in chain order, each taking its own time;
  /// a device's intervals never overlap; nothing runs before it is ready.
  func testTraceShapeUnderEveryScheduler() throws {
    let models = [
      one([1, 2, 0.5], [2, 3, 1], steps: 2), one([0.25], [0.75], steps: 3), one([1, 1], [1, 1], steps: 1),
      one([3, 1], [1, 3], steps: 2), SimulatedModel(steps: 0, forwardSeconds: [1], backwardSeconds: [1]),
    ]
    let work = models.reduce(0) { $0 + $1.totalSeconds }
    for devices in 1...3 {
      for name in builtinSchedulerNames {
        let r = try simulate(models, devices: devices, scheduler: makeBuiltinScheduler(name, seed: 9)!)
        let label = "\(name) on \(devices) device(s)"
        for (m, model) in models.enumerated() {
          let k = model.shardCount
          var expected: [ShardTask] = []
          for step in 0..<model.steps {
            expected += (0..<k).map { ShardTask(model: m, shard: $0, direction: .forward, step: step) }
            expected += (0..<k).reversed().map { ShardTask(model: m, shard: $0, direction: .backward, step: step) }
          }
          let mine = r.intervals.filter { $0.model == m }
          XCTAssertEqual(mine.map(\.task), expected, label)
          for (i, iv) in mine.enumerated() {
            let t = iv.task
            XCTAssertEqual(
              iv.end - iv.start,
              t.direction == .forward ? model.forwardSeconds[t.shard] : model.backwardSeconds[t.shard], label)
            if i > 0 { XCTAssertGreaterThanOrEqual(iv.start, mine[i - 1].end, label) }
          }
        }
        for d in 0..<devices {
          let mine = r.intervals(device: d)
          for i in mine.indices.dropFirst() { XCTAssertGreaterThanOrEqual(mine[i].start, mine[i - 1].end, label) }
        }
        XCTAssertEqual(r.busySeconds.reduce(0, +), work, accuracy: 1e-9, label)
        XCTAssertEqual(r.makespan, r.intervals.map(\.end).max()!, label)
        XCTAssertGreaterThanOrEqual(r.makespan, work / Double(devices) - 1e-9, label)
      }
    }
  }

  func testEdgeCases() throws {
    let empty = try simulate([], devices: 2, scheduler: LRTFScheduler())
    XCTAssertEqual(empty.makespan, 0)
    XCTAssertEqual(empty.intervals, [])
    XCTAssertThrowsError(try simulate(threeModels, devices: 0, scheduler: LRTFScheduler()))
    XCTAssertThrowsError(try simulate([one([1, 1], [1])], devices: 1, scheduler: LRTFScheduler()))
    XCTAssertThrowsError(try simulate([one([-1], [1])], devices: 1, scheduler: LRTFScheduler()))
    XCTAssertThrowsError(try simulate([one([], [])], devices: 1, scheduler: LRTFScheduler()))
    // Zero-time tasks still run in order and end.
    let zero = try simulate([one([0, 0], [0, 0], steps: 2)], devices: 2, scheduler: FIFOScheduler())
    XCTAssertEqual(zero.makespan, 0)
    XCTAssertEqual(zero.intervals.count, 8)
  }
}
