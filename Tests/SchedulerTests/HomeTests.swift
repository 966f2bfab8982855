import HydraCore
import HydraRuntime
import HydraSchedulers
import XCTest

/// A task under a distributed backend: its shard's state on `home`, moving costs `move` seconds.
func homed(
  _ model: Int, home: Int, remaining: Double = 1, estimate: Double = 1, move: Double = 0.1, backward: Bool = false
) -> ReadyTask {
  var t = ReadyTask(
    task: ShardTask(model: model, shard: 0, direction: backward ? .backward : .forward, step: 0),
    estimatedSeconds: estimate, remainingSeconds: remaining, state: .device(home), shardCount: 2)
  t.home = home
  t.moveBytes = 1 << 20
  t.moveSeconds = move
  if backward { t.allowedDevices = [home] }
  return t
}

/// Homes, moves and allowed devices (the `mpi` backend's view), and the start-up placement.
final class HomeTests: XCTestCase {
  func testLRTFRunsAtHomeFirstThenMovesWhatWouldWait() {
    // Device 0 is free, device 1 too. m0 (longest) lives on 1, m1 on 0, m2 on 1 as well.
    let view = SchedulerView(
      now: 0,
      ready: [homed(1, home: 0, remaining: 5), homed(0, home: 1, remaining: 9), homed(2, home: 1, remaining: 7)],
      freeDevices: [0, 1], deviceCount: 2, modelCount: 3)
    // Each device gets a task of its own: no move although m2 outranks m1.
    XCTAssertEqual(
      LRTFScheduler().schedule(view),
      [Assignment(task: fwd(0), device: 1), Assignment(task: fwd(1), device: 0)])
    // Device 0 free, its own models all busy: m2 (home 1, busy) moves there, as its move costs less
    // than the task; m0 would too but m2 has more left.
    let idle = SchedulerView(
      now: 0, ready: [homed(0, home: 1, remaining: 3), homed(2, home: 1, remaining: 7)], freeDevices: [0],
      deviceCount: 2, modelCount: 3)
    XCTAssertEqual(LRTFScheduler().schedule(idle), [Assignment(task: fwd(2), device: 0)])
    // A move dearer than the task itself is not worth it: the device stays idle.
    let dear = SchedulerView(
      now: 0, ready: [homed(0, home: 1, estimate: 1, move: 2)], freeDevices: [0], deviceCount: 2, modelCount: 1)
    XCTAssertEqual(LRTFScheduler().schedule(dear), [])
    // A backward never moves, whatever it costs.
    let back = SchedulerView(
      now: 0, ready: [homed(0, home: 1, move: 0, backward: true)], freeDevices: [0], deviceCount: 2, modelCount: 1)
    for s in [LRTFScheduler(), FIFOScheduler(), RoundRobinScheduler(), RandomScheduler(seed: 3)] as [Scheduler] {
      XCTAssertEqual(s.schedule(back), [], s.name)
    }
  }

  func testEveryBuiltinRespectsAllowedDevices() throws {
    // Random views: whatever each scheduler answers must pass validation (allowed devices
    // included), and a free home device with a task for it is never left idle by lrtf.
    var rng = SplitMix64(seed: 5)
    for name in builtinSchedulerNames {
      let scheduler = makeBuiltinScheduler(name, seed: 9)!
      for _ in 0..<300 {
        let devices = 1 + rng.nextInt(below: 4)
        let models = 1 + rng.nextInt(below: 6)
        let free = (0..<devices).filter { _ in rng.nextInt(below: 3) > 0 }
        let ready = (0..<models).filter { _ in rng.nextInt(below: 4) > 0 }.map {
          homed(
            $0, home: rng.nextInt(below: devices), remaining: Double(rng.nextInt(below: 10)),
            move: Double(rng.nextInt(below: 3)) * 0.5, backward: rng.nextInt(below: 2) == 0)
        }
        let view = SchedulerView(now: 0, ready: ready, freeDevices: free, deviceCount: devices, modelCount: models)
        let answer = scheduler.schedule(view)
        XCTAssertNoThrow(try validate(answer, against: view, scheduler: name), "\(name): \(answer) for \(ready)")
        if name == "lrtf" {
          for t in ready where free.contains(t.home!) {
            XCTAssertTrue(
              answer.contains { $0.device == t.home! }, "lrtf left device \(t.home!) idle with \(t.task) at home")
          }
        }
      }
    }
  }

  func testValidateRejectsADeviceTheTaskMayNotUse() {
    let view = SchedulerView(
      now: 0, ready: [homed(0, home: 1, backward: true)], freeDevices: [0, 1], deviceCount: 2, modelCount: 1)
    let bwd = ShardTask(model: 0, shard: 0, direction: .backward, step: 0)
    XCTAssertThrowsError(try validate([Assignment(task: bwd, device: 0)], against: view, scheduler: "t")) {
      XCTAssertTrue("\($0)".contains("may only run on [1]"), "\($0)")
    }
    XCTAssertNoThrow(try validate([Assignment(task: bwd, device: 1)], against: view, scheduler: "t"))
  }

  func testPlacementByModelIsLongestFirst() {
    // Work 7, 5, 4, 3, 1 on 2 devices: 7 -> d0, 5 -> d1, 4 -> d1 (9), 3 -> d0 (10), 1 -> d1 (10).
    let work: [[Double]] = [[3, 4], [1, 4], [2, 2], [0.5, 2.5], [1]]
    let bytes = work.map { $0.map { _ in 100 } }
    let homes = Placement.homes(work: work, bytes: bytes, devices: 2, byShard: false)
    XCTAssertEqual(homes, [[0, 0], [1, 1], [1, 1], [0, 0], [1]])
    // Each model whole on one device.
    for h in homes { XCTAssertEqual(Set(h).count, 1) }
  }

  func testPlacementByShardBalancesShardsAndBreaksTiesByMemory() {
    // Shards of work 4, 3, 3, 2 on 2 devices: 4 -> d0; 3 -> d1; 3 -> d1 (6); 2 -> d0 (6).
    let homes = Placement.homes(work: [[4, 3], [3, 2]], bytes: [[1, 1], [1, 1]], devices: 2, byShard: true)
    XCTAssertEqual(homes, [[0, 1], [1, 0]])
    // Equal work: the device holding fewer bytes gets the next shard.
    let tie = Placement.homes(work: [[1, 1, 1]], bytes: [[50, 10, 10]], devices: 2, byShard: true)
    XCTAssertEqual(tie, [[0, 1, 1]])
    // More devices than shards: one each, the rest stay empty.
    XCTAssertEqual(Placement.homes(work: [[2, 1]], bytes: [[1, 1]], devices: 4, byShard: true), [[0, 1]])
  }
}
