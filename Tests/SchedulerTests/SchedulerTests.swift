import HydraRuntime
import HydraSchedulers
import XCTest

/// A scheduler whose answers the test writes.
final class Scripted: Scheduler {
  let name = "scripted"
  let answer: (SchedulerView) -> [Assignment]
  init(_ answer: @escaping (SchedulerView) -> [Assignment]) { self.answer = answer }
  func schedule(_ view: SchedulerView) -> [Assignment] { answer(view) }
}

func fwd(_ model: Int, shard: Int = 0, step: Int = 0) -> ShardTask {
  ShardTask(model: model, shard: shard, direction: .forward, step: step)
}

func ready(
  _ model: Int, shard: Int = 0, remaining: Double = 1, state: Residency = .host, last: Int? = nil,
  since: Double = 0
) -> ReadyTask {
  ReadyTask(
    task: fwd(model, shard: shard), estimatedSeconds: 1, remainingSeconds: remaining, state: state,
    lastDevice: last, readySince: since, shardCount: 4)
}

/// Decisions of each plugin on views written by hand, and invalid answers caught by the simulator.
final class SchedulerTests: XCTestCase {
  func testLRTFOrderAndDevicePreference() {
    // Longest remaining first (m0 and m2 tie at 9: m0 first); m0's shard is on device 2, m2's input
    // on device 1, m1 takes what is left. A fourth task finds no device.
    let view = SchedulerView(
      now: 5,
      ready: [
        ready(1, remaining: 5), ready(2, remaining: 9, last: 1), ready(0, remaining: 9, state: .device(2), last: 1),
        ready(3, remaining: 2),
      ], freeDevices: [0, 1, 2], deviceCount: 4, modelCount: 4)
    XCTAssertEqual(
      LRTFScheduler().schedule(view),
      [Assignment(task: fwd(0), device: 2), Assignment(task: fwd(2), device: 1), Assignment(task: fwd(1), device: 0)])
    // A state on a busy device does not count; the input's device does.
    let busy = SchedulerView(
      now: 0, ready: [ready(0, state: .device(3), last: 2)], freeDevices: [1, 2], deviceCount: 4, modelCount: 1)
    XCTAssertEqual(LRTFScheduler().schedule(busy), [Assignment(task: fwd(0), device: 2)])
  }

  /// A state on disk: behind resident tasks whose models have about as much left (reading it back
  /// would cost more than the difference), ahead of them once its model has more left than the
  /// read costs; with no known cost (infinity), behind every resident task, as before.
  func testLRTFReadsAStateBackForTheModelFurthestFromItsEnd() {
    func disk(_ m: Int, remaining: Double, restore: Double) -> ReadyTask {
      var t = ready(m, remaining: remaining, state: .disk)
      t.restoreSeconds = restore
      return t
    }
    func pick(_ tasks: [ReadyTask], devices: [Int] = [0]) -> [Int] {
      let view = SchedulerView(now: 0, ready: tasks, freeDevices: devices, deviceCount: 2, modelCount: 4)
      return LRTFScheduler().schedule(view).map(\.task.model)
    }
    // 30 s left on disk with a 1.2 s read, against 29.5 s resident: the resident one.
    XCTAssertEqual(pick([ready(0, remaining: 29.5), disk(1, remaining: 30, restore: 1.2)]), [0])
    // Against 28.7 s resident (more than 1.2 s less): the one on disk.
    XCTAssertEqual(pick([ready(0, remaining: 28.7), disk(1, remaining: 30, restore: 1.2)]), [1])
    // Two devices: both, the disk one first.
    XCTAssertEqual(pick([ready(0, remaining: 28.7), disk(1, remaining: 30, restore: 1.2)], devices: [0, 1]), [1, 0])
    // Unknown cost: the resident one, however much more the disk one has left.
    XCTAssertEqual(pick([ready(0, remaining: 1), ready(2, remaining: 30, state: .disk)]), [0])
    // Two on disk: the longer left less its read, 30 - 5 < 27 - 1.
    XCTAssertEqual(pick([disk(1, remaining: 30, restore: 5), disk(2, remaining: 27, restore: 1)]), [2])
    // Without prefer_resident the disk costs nothing.
    let view = SchedulerView(
      now: 0, ready: [ready(0, remaining: 29.5), disk(1, remaining: 30, restore: 1.2)], freeDevices: [0],
      deviceCount: 1, modelCount: 2)
    XCTAssertEqual(LRTFScheduler(preferResident: false).schedule(view).map(\.task.model), [1])
  }

  func testFIFOOrder() {
    let view = SchedulerView(
      now: 5, ready: [ready(0, remaining: 9, since: 3), ready(2, since: 1), ready(1, since: 1)],
      freeDevices: [0, 1], deviceCount: 2, modelCount: 3)
    XCTAssertEqual(
      FIFOScheduler().schedule(view), [Assignment(task: fwd(1), device: 0), Assignment(task: fwd(2), device: 1)])
  }

  func testRoundRobinCyclesFromTheLastPick() {
    let s = RoundRobinScheduler()
    let all = (0..<4).map { ready($0) }
    XCTAssertEqual(
      s.schedule(SchedulerView(now: 0, ready: all, freeDevices: [0], deviceCount: 2, modelCount: 4)).map(\.task.model),
      [0])
    XCTAssertEqual(
      s.schedule(SchedulerView(now: 1, ready: all, freeDevices: [0, 1], deviceCount: 2, modelCount: 4)).map(
        \.task.model),
      [1, 2])
    // Model 3 is not ready: the pick after 2 wraps around to 0.
    XCTAssertEqual(
      s.schedule(SchedulerView(now: 2, ready: Array(all.prefix(3)), freeDevices: [1], deviceCount: 2, modelCount: 4))
        .map(\.task.model), [0])
    XCTAssertEqual(s.next, 1)
  }

  func testRandomFillsEveryFreeDevice() {
    let s = RandomScheduler(seed: 3)
    let view = SchedulerView(
      now: 0, ready: (0..<5).map { ready($0) }, freeDevices: [2, 0], deviceCount: 3, modelCount: 5)
    let a = s.schedule(view)
    XCTAssertEqual(a.map(\.device), [0, 2])
    XCTAssertNoThrow(try validate(a, against: view, scheduler: s.name))
    // Listing the ready tasks in another order changes nothing.
    let shuffled = SchedulerView(
      now: 0, ready: view.ready.reversed(), freeDevices: [0, 2], deviceCount: 3, modelCount: 5)
    XCTAssertEqual(RandomScheduler(seed: 3).schedule(shuffled), a)
  }

  func testBaselinesRunOneModelAtATime() {
    let seq = SequentialScheduler(), mp = ModelParallelScheduler()
    // Model 0 is done: model 1 is current; device 0 only / shard 3 on device 3 % 2 = 1.
    let v = SchedulerView(
      now: 0, ready: [ready(2), ready(1, shard: 3)], freeDevices: [0, 1], deviceCount: 2, modelCount: 3, finished: [0])
    XCTAssertEqual(seq.schedule(v), [Assignment(task: fwd(1, shard: 3), device: 0)])
    XCTAssertEqual(mp.schedule(v), [Assignment(task: fwd(1, shard: 3), device: 1)])
    // Model 1 is running (neither ready nor finished): nobody else starts.
    let running = SchedulerView(
      now: 0, ready: [ready(2)], freeDevices: [0], deviceCount: 2, modelCount: 3, finished: [0])
    XCTAssertEqual(seq.schedule(running), [])
    XCTAssertEqual(mp.schedule(running), [])
    // Its pinned device is busy: wait.
    let pinned = SchedulerView(
      now: 0, ready: [ready(1, shard: 1)], freeDevices: [0], deviceCount: 2, modelCount: 3, finished: [0])
    XCTAssertEqual(mp.schedule(pinned), [])
    // A view without `finished`: with nothing running, the lowest ready model is current.
    let bare = SchedulerView(now: 0, ready: [ready(2, shard: 2)], freeDevices: [0, 1], deviceCount: 2, modelCount: 3)
    XCTAssertEqual(seq.schedule(bare), [Assignment(task: fwd(2, shard: 2), device: 0)])
    XCTAssertEqual(mp.schedule(bare), [Assignment(task: fwd(2, shard: 2), device: 0)])
  }

  func testBuiltinsByName() {
    for name in builtinSchedulerNames { XCTAssertEqual(makeBuiltinScheduler(name)?.name, name) }
    XCTAssertNil(makeBuiltinScheduler("lifo"))
  }

  // Invalid answers are errors, never a hang. m0 takes 1 s a task, m1 10 s.
  let models = [
    SimulatedModel(steps: 1, forwardSeconds: [1], backwardSeconds: [1]),
    SimulatedModel(steps: 1, forwardSeconds: [10], backwardSeconds: [10]),
  ]

  func assertRejected(_ s: Scripted, _ fragment: String, line: UInt = #line) {
    XCTAssertThrowsError(try simulate(models, devices: 2, scheduler: s), line: line) { error in
      XCTAssertTrue(error is SchedulerError, "\(error)", line: line)
      XCTAssertTrue("\(error)".contains(fragment), "\(error)", line: line)
    }
  }

  func testInvalidAnswersAreErrors() {
    let bwd = ShardTask(model: 0, shard: 0, direction: .backward, step: 0)
    assertRejected(Scripted { _ in [Assignment(task: bwd, device: 0)] }, "not ready")
    assertRejected(Scripted { _ in [Assignment(task: fwd(0, step: 1), device: 0)] }, "not ready")
    assertRejected(Scripted { _ in [Assignment(task: fwd(0), device: 2)] }, "not free")
    assertRejected(
      Scripted { _ in [Assignment(task: fwd(0), device: 0), Assignment(task: fwd(1), device: 0)] }, "twice")
    assertRejected(
      Scripted { _ in [Assignment(task: fwd(0), device: 0), Assignment(task: fwd(0), device: 1)] }, "twice")
    // At t = 1 device 1 still runs m1: handing it m0's backward is an error.
    assertRejected(
      Scripted { v in
        v.now == 0
          ? [Assignment(task: fwd(0), device: 0), Assignment(task: fwd(1), device: 1)]
          : v.ready.map { Assignment(task: $0.task, device: 1) }
      }, "not free")
    // Nothing, forever: the first decision already has every device idle.
    assertRejected(Scripted { _ in [] }, "never end")
    // Nothing after the start: at 1 device 0 idles while device 1 runs (allowed); at 10 nothing runs.
    assertRejected(
      Scripted { v in
        v.now == 0 ? [Assignment(task: fwd(0), device: 0), Assignment(task: fwd(1), device: 1)] : []
      }, "never end")
  }

  func testIdlingWhileSomethingRunsIsAllowed() throws {
    // One task at a time, and only when every device is free: slow, but not an error.
    let one = Scripted { v in
      v.freeDevices.count == v.deviceCount ? [Assignment(task: v.ready[0].task, device: 1)] : []
    }
    let r = try simulate(models, devices: 2, scheduler: one)
    XCTAssertEqual(r.makespan, 22)
    XCTAssertEqual(r.busySeconds, [0, 22])
  }
}
