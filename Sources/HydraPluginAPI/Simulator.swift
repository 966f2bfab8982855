/// A deterministic discrete-event simulation of a job under a scheduler: fixed task times, a
/// simulated clock, no threads and no sleeping. It is how scheduler logic is tested, how
/// `hydra-mpi plan` shows the schedule a job would get on N devices, and what a scheduler that plans
/// (`planned`) searches over: it lives in the vocabulary so that a scheduler plugin can run it.

/// One model of a simulated job: `steps` training steps, each a strict chain of forward through
/// shards 0..<k, then backward through k-1...0, with these times per shard (seconds).
public struct SimulatedModel: Sendable, Equatable {
  public var steps: Int
  public var forwardSeconds: [Double]
  public var backwardSeconds: [Double]
  /// Bytes of each shard's state (parameters and optimizer state), what a task moves when its
  /// shard's state is not on its device; empty: nothing is counted.
  public var stateBytes: [Int] = []
  /// Seconds of one evaluation (its validation batches' forwards through every shard), which the
  /// device that ran a step's last task does right after it, as the runtime does: after the step
  /// numbered a multiple of `evalEvery` (0: none in between) and after the last step. 0: no
  /// evaluations are simulated.
  public var evaluationSeconds: Double = 0
  public var evalEvery = 0
  /// Seconds of one checkpoint write (the model's weights and optimizer state, hashed and flushed),
  /// which the device that ended the step does after the evaluation, as the runtime does: after
  /// the step numbered a multiple of `checkpointEvery` (0: none in between), at a rung and after
  /// the last step. 0: no checkpoints are simulated.
  public var checkpointSeconds: Double = 0
  public var checkpointEvery = 0
  /// Seconds of each shard's forward and backward in the first step the process runs, when they
  /// differ from the others (empty: they do not): that step's tasks map their buffers, gradients
  /// and optimizer state afresh, a page fault per 4 KiB, where later steps reuse them.
  public var firstForwardSeconds: [Double] = []
  public var firstBackwardSeconds: [Double] = []
  public init(steps: Int, forwardSeconds: [Double], backwardSeconds: [Double], stateBytes: [Int] = []) {
    self.steps = steps
    self.forwardSeconds = forwardSeconds
    self.backwardSeconds = backwardSeconds
    self.stateBytes = stateBytes
  }

  /// Whether the model is evaluated once it has done `done` steps (ModelRun's rule, rungs aside).
  func evaluates(after done: Int) -> Bool {
    evaluationSeconds > 0 && (done == steps || (evalEvery > 0 && done % evalEvery == 0))
  }
  /// Whether a checkpoint is written once it has done `done` steps (ModelRun's rule, rungs aside).
  func checkpoints(after done: Int) -> Bool {
    checkpointSeconds > 0 && (done == steps || (checkpointEvery > 0 && done % checkpointEvery == 0))
  }

  public var shardCount: Int { forwardSeconds.count }
  /// Seconds of one step: every task of its chain.
  public var stepSeconds: Double { forwardSeconds.reduce(0, +) + backwardSeconds.reduce(0, +) }
  /// Seconds of all steps on one device, with their evaluations: what the model takes alone.
  public var totalSeconds: Double {
    guard steps > 0 else { return 0 }
    return firstStepSeconds + Double(steps - 1) * stepSeconds + Double(evaluationCount) * evaluationSeconds
      + Double(checkpointCount) * checkpointSeconds
  }
  /// Seconds of the first step (`stepSeconds` without first-step times).
  public var firstStepSeconds: Double { chain.seconds(from: 0, forward: forward(step: 0), backward: backward(step: 0)) }
  /// The forward and backward times of `step`'s tasks.
  func forward(step: Int) -> [Double] {
    step == 0 && !firstForwardSeconds.isEmpty ? firstForwardSeconds : forwardSeconds
  }
  func backward(step: Int) -> [Double] {
    step == 0 && !firstBackwardSeconds.isEmpty ? firstBackwardSeconds : backwardSeconds
  }
  /// The evaluations of a whole run (`evaluates(after:)` for steps 1...steps).
  public var evaluationCount: Int { evaluationSeconds > 0 ? Self.count(steps: steps, every: evalEvery) : 0 }
  /// The checkpoints of a whole run (`checkpoints(after:)` for steps 1...steps).
  public var checkpointCount: Int { checkpointSeconds > 0 ? Self.count(steps: steps, every: checkpointEvery) : 0 }
  /// The steps of 1...steps that are multiples of `every`, or the last.
  private static func count(steps: Int, every: Int) -> Int {
    guard steps > 0 else { return 0 }
    guard every > 0 else { return 1 }
    return steps / every + (steps % every == 0 ? 0 : 1)
  }

  public var chain: StepChain { StepChain(shards: shardCount) }

  /// Seconds left from the `position`-th task of `step`'s chain on, that task included.
  func remainingSeconds(step: Int, position: Int) -> Double {
    chain.seconds(from: position, forward: forward(step: step), backward: backward(step: step))
      + Double(steps - step - 1) * stepSeconds
  }

  /// The `position`-th task of a step's chain (0..<2k) and its time.
  func task(model: Int, step: Int, position: Int) -> (task: ShardTask, seconds: Double) {
    let task = chain.task(at: position, model: model, step: step)
    return (task, task.direction == .forward ? forward(step: step)[task.shard] : backward(step: step)[task.shard])
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

/// A selection policy on the simulated clock. The simulator has no losses: `score` says what each
/// model would report at each of its rungs (lower is better; `hydra-mpi plan` uses a stand-in), and
/// the policy decides from those as in a real run. What a makespan depends on is how many models go
/// on at each rung, which is the policy's rule, not which ones.
public struct SimulatedSelection {
  public var policy: Selection
  public var setup: SelectionSetup
  public var score: (_ model: Int, _ rung: Int) -> Double
  public init(policy: Selection, setup: SelectionSetup, score: @escaping (_ model: Int, _ rung: Int) -> Double) {
    self.policy = policy
    self.setup = setup
    self.score = score
  }
}

/// An evaluation as it ran: of `model` after its step `step` (counted from 1), on `device`.
public struct EvaluationInterval: Sendable, Equatable {
  public var device: Int
  public var model: Int
  public var step: Int
  public var start: Double
  public var end: Double
  public init(device: Int, model: Int, step: Int, start: Double, end: Double) {
    self.device = device
    self.model = model
    self.step = step
    self.start = start
    self.end = end
  }
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
  /// Tasks that ran where their shard's state was not (a promotion from the host store or a move
  /// from another device), and the bytes of state they moved (`SimulatedModel.stateBytes`).
  public var moves: Int
  public var movedBytes: Int
  /// When each model's last task (or its final evaluation) ended (0 for a model with no steps).
  public var finishTimes: [Double]
  /// The evaluations the models' `evaluationSeconds` asked for, in the order they ended (not in
  /// `intervals`, which are shard tasks; `busySeconds` counts both).
  public var evaluations: [EvaluationInterval] = []
  /// The checkpoint writes the models' `checkpointSeconds` asked for, in the order they ended
  /// (each right after its step's evaluation, if any; `busySeconds` counts them).
  public var checkpoints: [EvaluationInterval] = []
  /// Under a selection policy: the steps each model trained (fewer than its `steps` when stopped).
  public var stepsDone: [Int] = []

  public init(
    makespan: Double, deviceCount: Int, intervals: [TaskInterval], decisions: Int, moves: Int = 0,
    movedBytes: Int = 0, finishTimes: [Double] = []
  ) {
    self.makespan = makespan
    self.deviceCount = deviceCount
    self.intervals = intervals
    self.decisions = decisions
    self.moves = moves
    self.movedBytes = movedBytes
    self.finishTimes = finishTimes
  }

  /// Seconds each device was busy.
  public var busySeconds: [Double] {
    var busy = [Double](repeating: 0, count: deviceCount)
    for i in intervals { busy[i.device] += i.end - i.start }
    for e in evaluations + checkpoints { busy[e.device] += e.end - e.start }
    return busy
  }
  /// Busy time over `makespan x devices`, in 0...1 (0 when nothing ran).
  public var utilisation: Double {
    makespan > 0 ? busySeconds.reduce(0, +) / (makespan * Double(deviceCount)) : 0
  }
  /// Each device's busy time over the makespan.
  public var deviceUtilisation: [Double] { busySeconds.map { makespan > 0 ? $0 / makespan : 0 } }
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
/// With a `bandwidth` (bytes per second), a task whose shard's state is not on its device first
/// moves it there: the move's seconds are added to the task (no overlap with the task before, so an
/// upper bound where the runtime prefetches). Without one, moves are counted but take no time.
///
/// The scheduler's `plan` is called first, with the models and the device count, as the
/// coordinator calls it before its first decision.
///
/// With a `selection`, each model is evaluated at its rungs (when it has `evaluationSeconds`) and
/// the policy told its score there, and when it ends; a model it pauses waits (its device free),
/// one it stops is done at once, one it lets go on is ready again, as in the runtime.
///
/// Throws `SchedulerError` for an invalid answer, or when the scheduler leaves every device idle
/// while tasks are ready (the run would never end), and `RuntimeError` for a malformed model.
public func simulate(
  _ models: [SimulatedModel], devices: Int, scheduler: Scheduler, bandwidth: Double? = nil,
  selection: SimulatedSelection? = nil
) throws
  -> SimulationResult
{
  guard devices >= 1 else { throw RuntimeError("simulate: devices must be >= 1, found \(devices)") }
  if let bandwidth, !(bandwidth.isFinite && bandwidth > 0) {
    throw RuntimeError("simulate: the bandwidth must be finite and > 0, found \(bandwidth)")
  }
  for (m, model) in models.enumerated() {
    guard model.steps >= 0, model.shardCount >= 1, model.backwardSeconds.count == model.shardCount,
      (model.forwardSeconds + model.backwardSeconds).allSatisfy({ $0.isFinite && $0 >= 0 }),
      model.evaluationSeconds.isFinite, model.evaluationSeconds >= 0, model.evalEvery >= 0,
      model.checkpointSeconds.isFinite, model.checkpointSeconds >= 0, model.checkpointEvery >= 0,
      model.stateBytes.isEmpty
        || (model.stateBytes.count == model.shardCount && model.stateBytes.allSatisfy { $0 >= 0 }),
      [model.firstForwardSeconds, model.firstBackwardSeconds].allSatisfy({
        $0.isEmpty || ($0.count == model.shardCount && $0.allSatisfy { $0.isFinite && $0 >= 0 })
      })
    else {
      throw RuntimeError(
        "simulate: model \(m) needs steps >= 0 and, per shard (at least one), a forward and a backward time that are finite and >= 0 (and state bytes >= 0, first-step times finite and >= 0, if any; evaluation and checkpoint times finite and >= 0, evalEvery and checkpointEvery >= 0)"
      )
    }
  }
  if let selection {
    guard selection.setup.models == models.count, selection.setup.rungSteps.count == models.count else {
      throw RuntimeError(
        "simulate: the selection was set up for \(selection.setup.models) models (\(selection.setup.rungSteps.count) rung lists); the job has \(models.count)"
      )
    }
    try selection.policy.start(selection.setup)
  }
  try scheduler.plan(Workload(models: models, devices: devices, bandwidth: bandwidth))

  // Per model: position in the chain, when its next task became ready, the device of its last task.
  var step = models.map { _ in 0 }, position = models.map { _ in 0 }
  var readySince = models.map { _ in 0.0 }, lastDevice = models.map { _ -> Int? in nil }
  var shardDevice = models.map { [Int?](repeating: nil, count: $0.shardCount) }
  var finished = Set(models.indices.filter { models[$0].steps == 0 })
  var busy = [TaskInterval?](repeating: nil, count: devices)
  // The work after a step each device is doing (of the model whose step it ended): from `start`,
  // an evaluation until `evaluatedAt` (nil: none), then a checkpoint if `checkpoint`.
  var evaluating = [(model: Int, start: Double, evaluatedAt: Double?, checkpoint: Bool)?](
    repeating: nil, count: devices)
  var evaluations: [EvaluationInterval] = [], checkpoints: [EvaluationInterval] = []
  // Under selection: models waiting at a rung, and models to stop when their running task ends.
  var paused = Set<Int>(), stopWhenDone = Set<Int>()
  var intervals: [TaskInterval] = [], decisions = 0, now = 0.0
  var moves = 0, movedBytes = 0
  var finishTimes = [Double](repeating: 0, count: models.count)
  // Kept as things happen, never rebuilt: the ready tasks (one per model at rest), the free devices
  // (ascending) and the running tasks' ends (a heap of (end, device)). A decision and a completion
  // cost O(log n) plus what the scheduler asks.
  let ready = ReadyIndex(capacity: models.count)
  var free = Array(0..<devices)
  var ends = CompletionHeap()
  // Every model below it has finished (models only ever finish).
  var finishedBelow = 0

  func readyTask(_ m: Int) -> ReadyTask {
    let (task, seconds) = models[m].task(model: m, step: step[m], position: position[m])
    return ReadyTask(
      task: task, estimatedSeconds: seconds,
      remainingSeconds: models[m].remainingSeconds(step: step[m], position: position[m]),
      state: shardDevice[m][task.shard].map { .device($0) } ?? .host, lastDevice: lastDevice[m],
      readySince: readySince[m], shardCount: models[m].shardCount)
  }
  for m in models.indices where !finished.contains(m) { ready.insert(readyTask(m)) }

  while finished.count < models.count {
    let readyCount = ready.count
    if !free.isEmpty && readyCount > 0 {
      // The view is gone when `decide` returns (unless the scheduler keeps it), so changing the
      // index below copies nothing.
      func decide() throws -> [Assignment] {
        let view = SchedulerView(
          now: now, readyIndex: ready, freeDevices: free, deviceCount: devices, modelCount: models.count,
          finished: finished, finishedBelow: finishedBelow)
        let answer = try scheduler.trySchedule(view)
        decisions += 1
        try validate(answer, against: view, scheduler: scheduler.name)
        return answer
      }
      let answer = try decide()
      for a in answer.sorted(by: { $0.device < $1.device }) {
        let m = a.task.model
        var seconds = ready[model: m]!.estimatedSeconds
        if shardDevice[m][a.task.shard] != a.device {
          let bytes = models[m].stateBytes.isEmpty ? 0 : models[m].stateBytes[a.task.shard]
          moves += 1
          movedBytes = movedBytes &+ bytes
          if let bandwidth { seconds += Double(bytes) / bandwidth }
        }
        ready.remove(model: m)
        let interval = TaskInterval(device: a.device, task: a.task, start: now, end: now + seconds)
        busy[a.device] = interval
        free.remove(at: free.partitioningIndex(of: a.device))
        ends.push(end: interval.end, device: a.device)
        intervals.append(interval)
      }
    }

    // Advance to the next completion; all completions at that time, in device order.
    if ends.first == nil && readyCount == 0 && !paused.isEmpty {
      throw RuntimeError(
        "selection \"\(selection?.policy.name ?? "")\" left model(s) \(paused.sorted().map(String.init).joined(separator: ", ")) waiting at a rung with nothing else to run (simulated, at \(now) s)"
      )
    }
    guard let next = ends.first?.end else {
      throw SchedulerError(
        "scheduler \"\(scheduler.name)\" left every device idle with \(readyCount) task(s) ready and nothing running at \(now) s: the run would never end"
      )
    }
    now = next
    var done: [Int] = []
    while let e = ends.first, e.end == next {
      done.append(e.device)
      ends.pop()
    }
    for d in done.sorted() {
      func finish(_ m: Int) {
        finished.insert(m)
        finishTimes[m] = now
      }
      // A model whose step (and evaluation, if it had one) is over: done, or ready again; under
      // selection, what the policy decides at a rung or at the model's end comes first.
      func stepOver(_ m: Int) throws {
        guard let selection else {
          if step[m] == models[m].steps { finish(m) } else { ready.insert(readyTask(m)) }
          return
        }
        var decisions: [Int: SelectionDecision]
        if let rung = selection.setup.rungSteps[m].firstIndex(of: step[m]) {
          decisions = selection.policy.reached(
            RungResult(model: m, rung: rung, step: step[m], score: selection.score(m, rung)))
          if decisions[m] == nil { decisions[m] = .proceed }
        } else if step[m] == models[m].steps {
          finish(m)
          decisions = selection.policy.ended(model: m)
        } else {
          ready.insert(readyTask(m))
          return
        }
        for (k, decision) in decisions.sorted(by: { $0.key < $1.key }) {
          guard k >= 0 && k < models.count else {
            throw RuntimeError(
              "selection \"\(selection.policy.name)\" decided for model \(k); the job has \(models.count)")
          }
          if finished.contains(k) { continue }
          let waiting = k == m || paused.contains(k)
          switch decision {
          case .proceed:
            guard waiting else { continue }
            paused.remove(k)
            readySince[k] = now
            if step[k] == models[k].steps { finish(k) } else { ready.insert(readyTask(k)) }
          case .pause:
            if waiting { paused.insert(k) }
          case .stop:
            if waiting {
              paused.remove(k)
              finish(k)
            } else if ready[model: k] != nil {
              ready.remove(model: k)
              finish(k)
            } else {
              stopWhenDone.insert(k)
            }
          }
        }
      }
      if let e = evaluating[d] {
        evaluating[d] = nil
        free.insert(d, at: free.partitioningIndex(of: d))
        if let at = e.evaluatedAt {
          evaluations.append(
            EvaluationInterval(device: d, model: e.model, step: step[e.model], start: e.start, end: at))
        }
        if e.checkpoint {
          checkpoints.append(
            EvaluationInterval(
              device: d, model: e.model, step: step[e.model], start: e.evaluatedAt ?? e.start, end: now))
        }
        readySince[e.model] = now
        try stepOver(e.model)
        continue
      }
      let interval = busy[d]!
      busy[d] = nil
      let m = interval.model
      lastDevice[m] = d
      shardDevice[m][interval.task.shard] = d
      readySince[m] = now
      position[m] += 1
      if stopWhenDone.remove(m) != nil {
        // The policy stopped it while this task ran: it trains no further (mid-step, as in the
        // runtime, which lets the task end and drops the rest of the step).
        free.insert(d, at: free.partitioningIndex(of: d))
        finish(m)
        continue
      }
      guard position[m] == models[m].chain.length else {
        free.insert(d, at: free.partitioningIndex(of: d))
        ready.insert(readyTask(m))
        continue
      }
      position[m] = 0
      step[m] += 1
      let atRung = selection?.setup.rungSteps[m].contains(step[m]) ?? false
      let evaluate = models[m].evaluationSeconds > 0 && (models[m].evaluates(after: step[m]) || atRung)
      let checkpoint = models[m].checkpointSeconds > 0 && (models[m].checkpoints(after: step[m]) || atRung)
      if evaluate || checkpoint {
        // The device that ended the step evaluates the model and writes its checkpoint before
        // either goes on.
        let evaluatedAt = evaluate ? now + models[m].evaluationSeconds : nil
        evaluating[d] = (m, now, evaluatedAt, checkpoint)
        ends.push(end: (evaluatedAt ?? now) + (checkpoint ? models[m].checkpointSeconds : 0), device: d)
      } else {
        free.insert(d, at: free.partitioningIndex(of: d))
        try stepOver(m)
      }
    }
    while finishedBelow < models.count && finished.contains(finishedBelow) { finishedBelow += 1 }
  }
  var result = SimulationResult(
    makespan: now, deviceCount: devices, intervals: intervals, decisions: decisions, moves: moves,
    movedBytes: movedBytes, finishTimes: finishTimes)
  result.evaluations = evaluations
  result.checkpoints = checkpoints
  result.stepsDone = step
  return result
}

extension Array where Element == Int {
  /// In an ascending array: the first index whose element is >= `value`.
  fileprivate func partitioningIndex(of value: Int) -> Int {
    var low = 0, high = count
    while low < high {
      let mid = (low + high) / 2
      if self[mid] < value { low = mid + 1 } else { high = mid }
    }
    return low
  }
}

/// The running tasks' ends: a binary min-heap of (end, device).
private struct CompletionHeap {
  private var items: [(end: Double, device: Int)] = []

  var first: (end: Double, device: Int)? { items.first }

  private func less(_ i: Int, _ j: Int) -> Bool {
    items[i].end != items[j].end ? items[i].end < items[j].end : items[i].device < items[j].device
  }

  mutating func push(end: Double, device: Int) {
    items.append((end, device))
    HeapSift.up(from: items.count - 1, less: { less($0, $1) }, swap: { items.swapAt($0, $1) })
  }

  mutating func pop() {
    let last = items.removeLast()
    guard !items.isEmpty else { return }
    items[0] = last
    HeapSift.down(from: 0, count: items.count, less: { less($0, $1) }, swap: { items.swapAt($0, $1) })
  }
}
