import HydraPluginAPI

/// The built-in schedulers by the names `[scheduler] name` uses, for the one place that registers
/// them. `seed` is used by `random` only.
public let builtinSchedulerNames = [
  "fifo", "lrtf", "model-parallel", "planned", "random", "round-robin", "sequential",
]

/// A fresh instance of the built-in scheduler `name` (schedulers keep state: one per run), or nil.
public func makeBuiltinScheduler(_ name: String, seed: UInt64 = 0) -> Scheduler? {
  switch name {
  case "lrtf": return LRTFScheduler()
  case "planned": return PlannedScheduler()
  case "fifo": return FIFOScheduler()
  case "round-robin": return RoundRobinScheduler()
  case "random": return RandomScheduler(seed: seed)
  case "sequential": return SequentialScheduler()
  case "model-parallel": return ModelParallelScheduler()
  default: return nil
  }
}

/// The free device `task` should run on, among those it may run on: its home (the device holding its
/// shard's state under `mpi`), else the device whose memory holds that state, else the one that ran
/// the model's previous task (holding its input), else the lowest free index.
func preferredDevice(for task: ReadyTask, among free: [Int]) -> Int? {
  let free = task.allowedDevices.map { allowed in free.filter(allowed.contains) } ?? free
  if let h = task.home, free.contains(h) { return h }
  if case .device(let d) = task.state, free.contains(d) { return d }
  if let d = task.lastDevice, free.contains(d) { return d }
  return free.min()
}

/// Hands out free devices to the ready tasks in `order` (walked lazily from the view's index: only
/// as many as it takes to fill the free devices; from the sorted list when the view names a model
/// twice).
func assignInOrder(_ order: ReadyOrder, _ view: SchedulerView) -> [Assignment] {
  if let index = view.readyIndex {
    if index.count > 0 && index.homedCount == index.count {
      return assignByHome(order, index, freeDevices: view.freeDevices)
    }
    return assignInOrder(index.ordered(order), freeDevices: view.freeDevices)
  }
  return assignInOrder(view.ready.sorted(by: order.precedes), freeDevices: view.freeDevices)
}

/// What `assignInOrder(index.ordered(order), freeDevices:)` answers when every ready task has a
/// home (a distributed backend), without walking past the tasks homed on busy devices: each free
/// device takes the first task in `order` homed on it (O(log n) from the index's per-home heaps);
/// devices with none left then go, in order, to the tasks whose state is cheaper to move than to
/// wait for, as there. That last walk is the only one that can pass many tasks: when a device has
/// nothing homed on it ready and the tasks ahead cost more to move than to run.
func assignByHome(_ order: ReadyOrder, _ index: ReadyIndex, freeDevices: [Int]) -> [Assignment] {
  var chosen: [(task: ReadyTask, device: Int)] = []
  var free: [Int] = []
  for d in freeDevices.sorted() {
    var homed = index.ordered(order, home: d)
    if let t = homed.next() { chosen.append((t, d)) } else { free.append(d) }
  }
  chosen.sort { order.precedes($0.task, $1.task) }
  var out = chosen.map { Assignment(task: $0.task.task, device: $0.device) }
  guard !free.isEmpty else { return out }
  let taken = Set(chosen.map { $0.task.task.model })
  for t in index.ordered(order) {
    if free.isEmpty { break }
    if taken.contains(t.task.model) || t.moveSeconds > t.estimatedSeconds { continue }
    guard let d = preferredDevice(for: t, among: free) else { continue }
    free.removeAll { $0 == d }
    out.append(Assignment(task: t.task, device: d))
  }
  return out
}

/// Hands out free devices to `tasks` in the order given, each to its preferred device, until one
/// side runs out. A task with a home (under `mpi`) first gets only its home; the devices still free
/// afterwards go, in the same order, to tasks whose home was busy, when moving their shard's state
/// costs less than the task itself (rather than leaving the device idle).
func assignInOrder<Tasks: Sequence>(_ tasks: Tasks, freeDevices: [Int]) -> [Assignment]
where Tasks.Element == ReadyTask {
  var free = freeDevices.sorted()
  var out: [Assignment] = []
  var waiting: [ReadyTask] = []
  for t in tasks {
    if free.isEmpty { break }
    let d: Int?
    if let h = t.home { d = free.contains(h) ? h : nil } else { d = preferredDevice(for: t, among: free) }
    guard let d else {
      waiting.append(t)
      continue
    }
    free.removeAll { $0 == d }
    out.append(Assignment(task: t.task, device: d))
  }
  for t in waiting where !free.isEmpty && t.moveSeconds <= t.estimatedSeconds {
    guard let d = preferredDevice(for: t, among: free) else { continue }
    free.removeAll { $0 == d }
    out.append(Assignment(task: t.task, device: d))
  }
  return out
}

/// `want` if `task` may run there, else the first device it may run on.
func allowedDevice(_ want: Int, for task: ReadyTask) -> Int {
  guard let allowed = task.allowedDevices, !allowed.contains(want) else { return want }
  return allowed[0]
}

/// The built-in scheduler `name` made from its `[scheduler]` options (only `lrtf` takes any:
/// `prefer_resident`, a boolean, and `horizon`, "end" or "rung") and the job's seed.
public func makeBuiltinScheduler(_ name: String, options: [String: ConfigValue], seed: UInt64) throws -> Scheduler {
  if name == "lrtf" {
    var rest = options
    let prefer = rest.removeValue(forKey: "prefer_resident")
    let horizon = rest.removeValue(forKey: "horizon")
    guard rest.isEmpty else {
      throw SchedulerError(
        "scheduler \"lrtf\" takes only prefer_resident and horizon; found \(rest.keys.sorted().joined(separator: ", "))"
      )
    }
    var preferResident = true
    switch prefer {
    case nil: break
    case .bool(let b)?: preferResident = b
    default: throw SchedulerError("scheduler.prefer_resident must be true or false")
    }
    var toRung = false
    switch horizon {
    case nil, .string("end")?: break
    case .string("rung")?: toRung = true
    default: throw SchedulerError("scheduler.horizon must be \"end\" or \"rung\"")
    }
    return LRTFScheduler(preferResident: preferResident, toNextRung: toRung)
  }
  guard options.isEmpty else {
    throw SchedulerError(
      "scheduler \"\(name)\" takes no options; found \(options.keys.sorted().joined(separator: ", "))")
  }
  guard let scheduler = makeBuiltinScheduler(name, seed: seed) else {
    throw SchedulerError("scheduler \"\(name)\" is not built in")
  }
  return scheduler
}
