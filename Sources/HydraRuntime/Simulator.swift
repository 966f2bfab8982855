/// A deterministic discrete-event simulation of a job under a scheduler: fixed task times, a
/// simulated clock, no threads and no sleeping. It is how scheduler logic is tested, and how
/// `hydra-mpi plan` shows the schedule a job would get on N devices.

/// One model of a simulated job: `steps` training steps, each a strict chain of forward through
/// shards 0..<k, then backward through k-1...0, with these times per shard (seconds).
public struct SimulatedModel: Sendable, Equatable {
  public var steps: Int
  public var forwardSeconds: [Double]
  public var backwardSeconds: [Double]
  public init(steps: Int, forwardSeconds: [Double], backwardSeconds: [Double]) {
    self.steps = steps
    self.forwardSeconds = forwardSeconds
    self.backwardSeconds = backwardSeconds
  }

  public var shardCount: Int { forwardSeconds.count }
  /// Seconds of one step: every task of its chain.
  public var stepSeconds: Double { forwardSeconds.reduce(0, +) + backwardSeconds.reduce(0, +) }
  /// Seconds of all steps on one device: what the model takes alone.
  public var totalSeconds: Double { Double(steps) * stepSeconds }

  public var chain: StepChain { StepChain(shards: shardCount) }

  /// Seconds left from the `position`-th task of `step`'s chain on, that task included.
  func remainingSeconds(step: Int, position: Int) -> Double {
    chain.seconds(from: position, forward: forwardSeconds, backward: backwardSeconds)
      + Double(steps - step - 1) * stepSeconds
  }

  /// The `position`-th task of a step's chain (0..<2k) and its time.
  func task(model: Int, step: Int, position: Int) -> (task: ShardTask, seconds: Double) {
    let task = chain.task(at: position, model: model, step: step)
    return (task, task.direction == .forward ? forwardSeconds[task.shard] : backwardSeconds[task.shard])
  }
}

/// One task as it ran: on `device`, from `start` to `end` (simulated seconds).
public struct TaskInterval: Sendable, Equatable, CustomStringConvertible {
  public var device: Int
  public var task: ShardTask
  public var start: Double
  public var end: Double
  public var model: Int { task.model }
  public init(device: Int, task: ShardTask, start: Double, end: Double) {
    self.device = device
    self.task = task
    self.start = start
    self.end = end
  }
  public var description: String { "device \(device): \(task) [\(start), \(end)]" }
}

/// The schedule a simulation produced.
public struct SimulationResult: Sendable {
  /// When the last task ended.
  public var makespan: Double
  public var deviceCount: Int
  /// Every task that ran, in the order it started (ties: device index).
  public var intervals: [TaskInterval]
  /// How many times the scheduler was asked.
  public var decisions: Int

  /// Seconds each device was busy.
  public var busySeconds: [Double] {
    var busy = [Double](repeating: 0, count: deviceCount)
    for i in intervals { busy[i.device] += i.end - i.start }
    return busy
  }
  /// Busy time over `makespan x devices`, in 0...1 (0 when nothing ran).
  public var utilisation: Double {
    makespan > 0 ? busySeconds.reduce(0, +) / (makespan * Double(deviceCount)) : 0
  }
  /// The intervals of one device, in time order.
  public func intervals(device: Int) -> [TaskInterval] { intervals.filter { $0.device == device } }
}

/// Runs `models` on `devices` devices under `scheduler` until every model has done its steps.
///
/// Whenever a device is free and a task is ready, the scheduler gets a `SchedulerView`: per ready
/// task its time, the model's remaining seconds (this task included), when it became ready, the
/// device of the model's previous task, and where the shard's state is (`.device(d)` for the device
/// that last ran that shard, else `.host`); `finished` holds the models that are done. Its answer is
/// checked with `validate` and the tasks start; then the clock moves to the next completion.
/// Completions at the same time are all processed, in device index order, before the next decision.
///
/// Throws `SchedulerError` for an invalid answer, or when the scheduler leaves every device idle
/// while tasks are ready (the run would never end), and `RuntimeError` for a malformed model.
public func simulate(_ models: [SimulatedModel], devices: Int, scheduler: Scheduler) throws -> SimulationResult {
  guard devices >= 1 else { throw RuntimeError("simulate: devices must be >= 1, found \(devices)") }
  for (m, model) in models.enumerated() {
    guard model.steps >= 0, model.shardCount >= 1, model.backwardSeconds.count == model.shardCount,
      (model.forwardSeconds + model.backwardSeconds).allSatisfy({ $0.isFinite && $0 >= 0 })
    else {
      throw RuntimeError(
        "simulate: model \(m) needs steps >= 0 and, per shard (at least one), a forward and a backward time that are finite and >= 0"
      )
    }
  }

  // Per model: position in the chain, when its next task became ready, the device of its last task.
  var step = models.map { _ in 0 }, position = models.map { _ in 0 }
  var readySince = models.map { _ in 0.0 }, lastDevice = models.map { _ -> Int? in nil }
  var shardDevice = models.map { [Int?](repeating: nil, count: $0.shardCount) }
  var running = Set<Int>()
  var finished = Set(models.indices.filter { models[$0].steps == 0 })
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
      let answer = try scheduler.trySchedule(view)
      decisions += 1
      try validate(answer, against: view, scheduler: scheduler.name)
      for a in answer.sorted(by: { $0.device < $1.device }) {
        let seconds = ready.first { $0.task == a.task }!.estimatedSeconds
        let interval = TaskInterval(device: a.device, task: a.task, start: now, end: now + seconds)
        busy[a.device] = interval
        running.insert(a.task.model)
        intervals.append(interval)
      }
    }

    // Advance to the next completion; all completions at that time, in device order.
    guard let next = busy.compactMap({ $0?.end }).min() else {
      throw SchedulerError(
        "scheduler \"\(scheduler.name)\" left every device idle with \(ready.count) task(s) ready and nothing running at \(now) s: the run would never end"
      )
    }
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
        position[m] = 0
        step[m] += 1
        if step[m] == models[m].steps { finished.insert(m) }
      }
    }
  }
  return SimulationResult(makespan: now, deviceCount: devices, intervals: intervals, decisions: decisions)
}
