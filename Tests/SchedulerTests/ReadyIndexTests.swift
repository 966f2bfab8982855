import Foundation
import HydraSchedulers
import XCTest

@testable import HydraPluginAPI
@testable import HydraRuntime

// The oracle: the built-in policies as they were written over the whole ready list (sort it, walk
// it), before the runtime kept an index. The schedulers under test answer from `ReadyIndex`; over
// many random views both must choose the same assignments.

private func referencePreferred(_ t: ReadyTask, among free: [Int]) -> Int? {
  let free = t.allowedDevices.map { allowed in free.filter(allowed.contains) } ?? free
  if let h = t.home, free.contains(h) { return h }
  if case .device(let d) = t.state, free.contains(d) { return d }
  if let d = t.lastDevice, free.contains(d) { return d }
  return free.min()
}

private func referenceAssign(_ tasks: [ReadyTask], _ freeDevices: [Int]) -> [Assignment] {
  var free = freeDevices.sorted(), out: [Assignment] = [], waiting: [ReadyTask] = []
  for t in tasks where !free.isEmpty {
    let d = t.home.map { free.contains($0) ? $0 : nil } ?? referencePreferred(t, among: free)
    guard let d else {
      waiting.append(t)
      continue
    }
    free.removeAll { $0 == d }
    out.append(Assignment(task: t.task, device: d))
  }
  for t in waiting where !free.isEmpty && t.moveSeconds <= t.estimatedSeconds {
    guard let d = referencePreferred(t, among: free) else { continue }
    free.removeAll { $0 == d }
    out.append(Assignment(task: t.task, device: d))
  }
  return out
}

private final class ReferenceLRTF: Scheduler {
  let name = "lrtf"
  let resident: Bool, rung: Bool
  init(resident: Bool = true, rung: Bool = false) { (self.resident, self.rung) = (resident, rung) }
  func schedule(_ view: SchedulerView) -> [Assignment] {
    func left(_ t: ReadyTask) -> Double { rung ? t.secondsToNextRung ?? t.remainingSeconds : t.remainingSeconds }
    // With resident first: tasks on disk of unknown cost after all others, by time left; the rest
    // by time left less the cost of reading back those on disk.
    func tier(_ t: ReadyTask) -> Int { resident && t.state == .disk && t.restoreSeconds == .infinity ? 1 : 0 }
    func key(_ t: ReadyTask) -> Double { resident && t.state == .disk && tier(t) == 0 ? left(t) - t.restoreSeconds : left(t) }
    let order = view.ready.sorted {
      if tier($0) != tier($1) { return tier($0) < tier($1) }
      if key($0) != key($1) { return key($0) > key($1) }
      return left($0) != left($1) ? left($0) > left($1) : $0.task.model < $1.task.model
    }
    return referenceAssign(order, view.freeDevices)
  }
}

private final class ReferenceFIFO: Scheduler {
  let name = "fifo"
  func schedule(_ view: SchedulerView) -> [Assignment] {
    let order = view.ready.sorted {
      $0.readySince != $1.readySince ? $0.readySince < $1.readySince : $0.task.model < $1.task.model
    }
    return referenceAssign(order, view.freeDevices)
  }
}

private final class ReferenceRoundRobin: Scheduler {
  let name = "round-robin"
  var next = 0
  func schedule(_ view: SchedulerView) -> [Assignment] {
    var ready = view.ready, free = view.freeDevices.sorted(), out: [Assignment] = []
    let n = max(view.modelCount, (ready.map(\.task.model).max() ?? -1) + 1, 1)
    while !ready.isEmpty, !free.isEmpty {
      let start = next
      let distance = { (t: ReadyTask) in ((t.task.model - start) % n + n) % n }
      let t = ready.remove(at: ready.indices.min { distance(ready[$0]) < distance(ready[$1]) }!)
      guard let d = referencePreferred(t, among: free) else { continue }
      free.removeAll { $0 == d }
      out.append(Assignment(task: t.task, device: d))
      next = (t.task.model + 1) % n
    }
    return out
  }
}

private final class ReferenceRandom: Scheduler {
  let name = "random"
  var rng: SplitMix64
  init(seed: UInt64) { rng = SplitMix64(seed: seed) }
  func schedule(_ view: SchedulerView) -> [Assignment] {
    var ready = view.ready.sorted { $0.task.model < $1.task.model }, out: [Assignment] = []
    for d in view.freeDevices.sorted() where !ready.isEmpty {
      let candidates = ready.indices.filter { ready[$0].allowedDevices?.contains(d) ?? true }
      guard !candidates.isEmpty else { continue }
      let t = ready.remove(at: candidates[rng.nextInt(below: candidates.count)])
      out.append(Assignment(task: t.task, device: d))
    }
    return out
  }
}

/// sequential (`pinShards` false) and model-parallel (true).
private final class ReferenceOneAtATime: Scheduler {
  let name: String
  let pinShards: Bool
  init(pinShards: Bool) { (self.pinShards, name) = (pinShards, pinShards ? "model-parallel" : "sequential") }
  func schedule(_ view: SchedulerView) -> [Assignment] {
    let current = (0..<view.modelCount).first { !view.finished.contains($0) }
    var task = view.ready.first { $0.task.model == current }
    if task == nil && view.freeDevices.count >= view.deviceCount {
      task = view.ready.min { $0.task.model < $1.task.model }
    }
    guard let t = task, view.deviceCount > 0 else { return [] }
    var d = pinShards ? t.task.shard % view.deviceCount : 0
    if let allowed = t.allowedDevices, !allowed.contains(d) { d = allowed[0] }
    return view.freeDevices.contains(d) ? [Assignment(task: t.task, device: d)] : []
  }
}

/// Pairs of (scheduler under test, its reference), fresh.
private func pairs(seed: UInt64) -> [(Scheduler, Scheduler)] {
  var out: [(Scheduler, Scheduler)] = []
  for resident in [true, false] {
    for rung in [true, false] {
      out.append(
        (LRTFScheduler(preferResident: resident, toNextRung: rung), ReferenceLRTF(resident: resident, rung: rung)))
    }
  }
  out.append((FIFOScheduler(), ReferenceFIFO()))
  out.append((RoundRobinScheduler(), ReferenceRoundRobin()))
  out.append((RandomScheduler(seed: seed), ReferenceRandom(seed: seed)))
  out.append((SequentialScheduler(), ReferenceOneAtATime(pinShards: false)))
  out.append((ModelParallelScheduler(), ReferenceOneAtATime(pinShards: true)))
  return out
}

/// The simulator as it was: a fresh list of ready tasks for every decision, and a linear search
/// for the next completion.
private func referenceSimulate(_ models: [SimulatedModel], devices: Int, scheduler: Scheduler) throws
  -> SimulationResult
{
  var step = models.map { _ in 0 }, position = models.map { _ in 0 }
  var readySince = models.map { _ in 0.0 }, lastDevice = models.map { _ -> Int? in nil }
  var shardDevice = models.map { [Int?](repeating: nil, count: $0.shardCount) }
  var running = Set<Int>(), finished = Set(models.indices.filter { models[$0].steps == 0 })
  var busy = [TaskInterval?](repeating: nil, count: devices)
  var intervals: [TaskInterval] = [], decisions = 0, now = 0.0
  while finished.count < models.count {
    let free = (0..<devices).filter { busy[$0] == nil }
    var ready: [ReadyTask] = []
    for m in models.indices where !finished.contains(m) && !running.contains(m) {
      let (task, seconds) = models[m].task(model: m, step: step[m], position: position[m])
      ready.append(
        ReadyTask(
          task: task, estimatedSeconds: seconds,
          remainingSeconds: models[m].remainingSeconds(step: step[m], position: position[m]),
          state: shardDevice[m][task.shard].map { .device($0) } ?? .host, lastDevice: lastDevice[m],
          readySince: readySince[m], shardCount: models[m].shardCount))
    }
    if !free.isEmpty && !ready.isEmpty {
      let view = SchedulerView(
        now: now, ready: ready, freeDevices: free, deviceCount: devices, modelCount: models.count,
        finished: finished)
      let answer = scheduler.schedule(view)
      decisions += 1
      for a in answer.sorted(by: { $0.device < $1.device }) {
        let interval = TaskInterval(
          device: a.device, task: a.task, start: now, end: now + ready.first { $0.task == a.task }!.estimatedSeconds)
        busy[a.device] = interval
        running.insert(a.task.model)
        intervals.append(interval)
      }
    }
    guard let next = busy.compactMap({ $0?.end }).min() else { throw SchedulerError("stuck") }
    now = next
    for d in 0..<devices {
      guard let interval = busy[d], interval.end == next else { continue }
      busy[d] = nil
      let m = interval.model
      running.remove(m)
      lastDevice[m] = d
      shardDevice[m][interval.task.shard] = d
      readySince[m] = now
      position[m] += 1
      if position[m] == models[m].chain.length {
        (position[m], step[m]) = (0, step[m] + 1)
        if step[m] == models[m].steps { finished.insert(m) }
      }
    }
  }
  return SimulationResult(makespan: now, deviceCount: devices, intervals: intervals, decisions: decisions)
}

/// The runtime's index of ready tasks, and the built-in schedulers answering from it, against the
/// full-list oracle.
final class ReadyIndexTests: XCTestCase {
  /// A ready task with random estimates; a few are bound to devices (as under `mpi`) when `bound`,
  /// every one when `homed`.
  private func randomTask(_ m: Int, devices: Int, bound: Bool, homed: Bool = false, _ rng: inout SplitMix64)
    -> ReadyTask
  {
    // Few distinct values, so that ties (broken by model index) are common.
    func pick(_ n: Int) -> Double { Double(rng.nextInt(below: n)) }
    let k = 1 + rng.nextInt(below: 3)
    let shard = rng.nextInt(below: k)
    let states: [Residency] = [.host, .disk, .device(rng.nextInt(below: devices))]
    var t = ReadyTask(
      task: ShardTask(
        model: m, shard: shard, direction: rng.nextInt(below: 2) == 0 ? .forward : .backward,
        step: rng.nextInt(below: 3)),
      estimatedSeconds: 1 + pick(3), remainingSeconds: pick(6), state: states[rng.nextInt(below: 3)],
      lastDevice: rng.nextInt(below: 2) == 0 ? nil : rng.nextInt(below: devices), readySince: pick(4), shardCount: k)
    if rng.nextInt(below: 2) == 0 { t.secondsToNextRung = pick(6) }
    // A known cost of reading a state on disk back on half of them (any task may carry one).
    if rng.nextInt(below: 2) == 0 { t.restoreSeconds = pick(4) }
    if homed || (bound && rng.nextInt(below: 3) == 0) {
      let home = rng.nextInt(below: devices)
      t.home = home
      if rng.nextInt(below: 2) == 0 { t.allowedDevices = [home] }
      t.moveSeconds = pick(4)
    }
    return t
  }

  func testIndexAnswersAsTheListWould() {
    var rng = SplitMix64(seed: 11)
    let n = 37
    let index = ReadyIndex(capacity: n)
    var tasks = [ReadyTask?](repeating: nil, count: n)
    let orders: [ReadyOrder] = [
      .longestRemaining(residentFirst: true), .longestRemaining(residentFirst: false),
      .longestToNextRung(residentFirst: true), .earliestReady,
    ]
    for round in 0..<2000 {
      let m = rng.nextInt(below: n)
      if rng.nextInt(below: 3) == 0 {
        index.remove(model: m)
        tasks[m] = nil
      } else {
        let t = randomTask(m, devices: 4, bound: true, &rng)
        index.insert(t)
        tasks[m] = t
      }
      let list = tasks.compactMap { $0 }
      XCTAssertEqual(index.count, list.count)
      XCTAssertEqual(index.all, list)
      XCTAssertEqual(index.constrainedCount, list.filter { $0.home != nil || $0.allowedDevices != nil }.count)
      XCTAssertEqual(index.homedCount, list.filter { $0.home != nil }.count)
      for (k, t) in list.enumerated() {
        XCTAssertEqual(index.model(atRank: k), t.task.model)
        XCTAssertEqual(index.rank(of: t.task.model), k)
      }
      for x in 0...n {
        XCTAssertEqual(index.firstModel(atOrAfter: x), list.first { $0.task.model >= x }?.task.model)
      }
      // Orders are asked for at different times: a heap built late must be kept up to date as well.
      for order in orders.prefix(1 + round / 500) {
        XCTAssertEqual(Array(index.ordered(order)), list.sorted(by: order.precedes), "\(order)")
        XCTAssertEqual(Array(index.ordered(order).prefix(3)), Array(list.sorted(by: order.precedes).prefix(3)))
        // By home, from heaps built at another time than the order's own.
        if round % 7 == 0 || round > 1000 {
          for d in -1...4 {
            XCTAssertEqual(
              Array(index.ordered(order, home: d)), list.filter { $0.home == d }.sorted(by: order.precedes),
              "\(order) home \(d)")
          }
        }
      }
    }
  }

  /// Every built-in scheduler, over sequences of random views (stateful ones keep their state from
  /// view to view), answers as the full-list reference does: views over the runtime's index, and
  /// views made from a list.
  func testBuiltinsChooseAsTheFullListReference() {
    for seed in UInt64(1)...40 {
      var rng = SplitMix64(seed: seed)
      let models = 1 + rng.nextInt(below: 40), devices = 1 + rng.nextInt(below: 9)
      // Some tasks bound to devices, or every one homed (a distributed backend: the per-home path).
      let bound = seed % 4 == 0, homed = seed % 4 == 2
      for (fast, reference) in pairs(seed: seed) {
        let index = ReadyIndex(capacity: models)
        var finished = Set<Int>()
        for _ in 0..<60 {
          // A few models change between decisions, as in a run.
          for _ in 0..<(1 + rng.nextInt(below: 6)) {
            let m = rng.nextInt(below: models)
            switch rng.nextInt(below: 4) {
            case 0: index.remove(model: m)
            case 1:
              index.remove(model: m)
              finished.insert(m)
            default:
              index.insert(randomTask(m, devices: devices, bound: bound, homed: homed, &rng))
              finished.remove(m)
            }
          }
          let free = (0..<devices).filter { _ in rng.nextInt(below: 3) != 0 }.shuffled(using: &rng)
          let view = SchedulerView(
            now: 0, readyIndex: index, freeDevices: free, deviceCount: devices, modelCount: models, finished: finished)
          let list = SchedulerView(
            now: 0, ready: index.all.shuffled(using: &rng), freeDevices: free, deviceCount: devices, modelCount: models,
            finished: finished)
          let expected = reference.schedule(list)
          if fast.name == "random" || fast.name == "round-robin" {
            // Stateful: one answer per view, from the index here and from the list every other time.
            let useList = rng.nextInt(below: 2) == 0
            XCTAssertEqual(fast.schedule(useList ? list : view), expected, "\(fast.name) seed \(seed)")
          } else {
            XCTAssertEqual(fast.schedule(view), expected, "\(fast.name) seed \(seed)")
            XCTAssertEqual(fast.schedule(list), expected, "\(fast.name) seed \(seed) (list)")
          }
          XCTAssertNoThrow(try validate(expected, against: view, scheduler: fast.name))
        }
      }
    }
  }

  /// The simulator with its incremental structures and the schedulers' indexed paths gives, task for
  /// task, the schedule of the old simulator driving the full-list references.
  func testSimulatorMatchesTheFullListSimulator() throws {
    for seed in UInt64(1)...12 {
      var rng = SplitMix64(seed: seed)
      let models = (0..<(1 + rng.nextInt(below: 12))).map { _ -> SimulatedModel in
        let k = 1 + rng.nextInt(below: 3)
        // Whole seconds: completions often coincide, so several devices free up at once.
        let f = (0..<k).map { _ in Double(1 + rng.nextInt(below: 3)) }
        return SimulatedModel(steps: rng.nextInt(below: 4), forwardSeconds: f, backwardSeconds: f.map { 2 * $0 })
      }
      let devices = 1 + rng.nextInt(below: 6)
      for (fast, reference) in pairs(seed: seed) {
        let a = try simulate(models, devices: devices, scheduler: fast)
        let b = try referenceSimulate(models, devices: devices, scheduler: reference)
        XCTAssertEqual(a.intervals, b.intervals, "\(fast.name) seed \(seed)")
        XCTAssertEqual(a.makespan, b.makespan, "\(fast.name) seed \(seed)")
        XCTAssertEqual(a.decisions, b.decisions, "\(fast.name) seed \(seed)")
      }
    }
  }

  /// 6 equal models (one shard: fwd 1 s, bwd 1 s; 2 steps) on 3 devices: 24 s of work, so no
  /// schedule beats 8 s. Three devices free up at every whole second, decided in one batch.
  /// lrtf: t0 m0..m2 fwd (ties by index); t1 m3..m5 fwd (4 s left against 3); t2 m0..m2 bwd on the
  /// devices holding their shards; t3 m3..m5 bwd; then the same for step 1, so 8 s with no gap.
  func testBatchesOfFreeDevicesKeepTheOptimum() throws {
    let models = Array(repeating: SimulatedModel(steps: 2, forwardSeconds: [1], backwardSeconds: [1]), count: 6)
    let r = try simulate(models, devices: 3, scheduler: LRTFScheduler())
    XCTAssertEqual(r.makespan, 8)
    XCTAssertEqual(r.utilisation, 1)
    XCTAssertEqual(r.decisions, 8)
    XCTAssertEqual(r.intervals.prefix(6).map(\.model), [0, 1, 2, 3, 4, 5])
    XCTAssertEqual(r.intervals(device: 1).map(\.model), [1, 4, 1, 4, 1, 4, 1, 4])
  }

  /// A view kept past its decision (as a recording scheduler keeps it) still shows the tasks it was
  /// made with after the runtime's index has moved on.
  func testKeptViewsKeepTheirTasks() {
    let index = ReadyIndex(capacity: 3)
    index.insert(ready(0, remaining: 5))
    index.insert(ready(2, remaining: 7))
    let view = SchedulerView(now: 0, readyIndex: index, freeDevices: [0], deviceCount: 1, modelCount: 3)
    index.remove(model: 0)
    index.insert(ready(1))
    XCTAssertEqual(view.ready.map(\.task.model), [0, 2])
    XCTAssertEqual(view.readyIndex?.count, 2)
    XCTAssertEqual(LRTFScheduler().schedule(view), [Assignment(task: fwd(2), device: 0)])
    XCTAssertEqual(index.all.map(\.task.model), [1, 2])
  }

  /// A measurement, not a test (opt-in: HYDRA_DECISION_TIMING=1, a release build): lrtf's decision
  /// under a distributed backend (every ready task homed, one device free, the rest busy) from the
  /// per-home heaps, against the walk over the order that skips tasks homed on busy devices, at 4
  /// models per device. Prints microseconds per decision.
  func testDecisionTimingWithHomes() throws {
    try XCTSkipUnless(
      ProcessInfo.processInfo.environment["HYDRA_DECISION_TIMING"] == "1",
      "set HYDRA_DECISION_TIMING=1 (and build with -c release) to time decisions with homes")
    let order = ReadyOrder.longestRemaining(residentFirst: true)
    // The walk as it was: every task in order until the free devices are gone.
    func walk(_ index: ReadyIndex, _ free: [Int]) -> [Assignment] {
      var free = free, out: [Assignment] = [], waiting: [ReadyTask] = []
      for t in index.ordered(order) {
        if free.isEmpty { break }
        if let h = t.home, free.contains(h) {
          free.removeAll { $0 == h }
          out.append(Assignment(task: t.task, device: h))
        } else {
          waiting.append(t)
        }
      }
      for t in waiting where !free.isEmpty && t.moveSeconds <= t.estimatedSeconds {
        out.append(Assignment(task: t.task, device: free.removeFirst()))
      }
      return out
    }
    for models in [64, 512, 4096] {
      let devices = models / 4
      var rng = SplitMix64(seed: 5)
      let index = ReadyIndex(capacity: models)
      func task(_ m: Int) -> ReadyTask {
        var t = ReadyTask(
          task: ShardTask(model: m, shard: 0, direction: .forward, step: 0), estimatedSeconds: 1,
          remainingSeconds: Double(rng.nextInt(below: 1_000_000)), shardCount: 1)
        t.home = m % devices
        t.moveSeconds = 2  // dearer to move than to wait: nothing runs away from home
        return t
      }
      for m in 0..<models { index.insert(task(m)) }
      let lrtf = LRTFScheduler()
      var seconds = (home: 0.0, walk: 0.0)
      let decisions = 20_000
      for i in 0..<decisions {
        let free = [i % devices]
        let view = SchedulerView(
          now: 0, readyIndex: index, freeDevices: free, deviceCount: devices, modelCount: models, finished: [])
        var start = DispatchTime.now().uptimeNanoseconds
        let a = lrtf.schedule(view)
        seconds.home += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        start = DispatchTime.now().uptimeNanoseconds
        let b = walk(index, free)
        seconds.walk += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        XCTAssertEqual(a, b)
        // The chosen model's task changes (it ran), as between decisions in a run.
        if let m = a.first?.task.model { index.insert(task(m)) }
      }
      print(
        String(
          format: "decision with homes, %d models on %d devices: per-home heaps %.2f us, walk %.2f us",
          models, devices, seconds.home / Double(decisions) * 1e6, seconds.walk / Double(decisions) * 1e6))
    }
  }
}
