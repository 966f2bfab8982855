import HydraRuntime

/// The built-in schedulers by the names `[scheduler] name` uses, for the one place that registers
/// them. `seed` is used by `random` only.
public let builtinSchedulerNames = ["fifo", "lrtf", "model-parallel", "random", "round-robin", "sequential"]

/// A fresh instance of the built-in scheduler `name` (schedulers keep state: one per run), or nil.
public func makeBuiltinScheduler(_ name: String, seed: UInt64 = 0) -> Scheduler? {
  switch name {
  case "lrtf": return LRTFScheduler()
  case "fifo": return FIFOScheduler()
  case "round-robin": return RoundRobinScheduler()
  case "random": return RandomScheduler(seed: seed)
  case "sequential": return SequentialScheduler()
  case "model-parallel": return ModelParallelScheduler()
  default: return nil
  }
}

/// The free device `task` should run on: the one whose memory holds its shard's state, else the one
/// that ran the model's previous task (holding its input), else the lowest free index.
func preferredDevice(for task: ReadyTask, among free: [Int]) -> Int? {
  if case .device(let d) = task.state, free.contains(d) { return d }
  if let d = task.lastDevice, free.contains(d) { return d }
  return free.min()
}

/// Hands out free devices to `tasks` in the order given, each to its preferred device, until one
/// side runs out.
func assignInOrder(_ tasks: [ReadyTask], freeDevices: [Int]) -> [Assignment] {
  var free = freeDevices.sorted()
  var out: [Assignment] = []
  for t in tasks {
    guard let d = preferredDevice(for: t, among: free) else { break }
    free.removeAll { $0 == d }
    out.append(Assignment(task: t.task, device: d))
  }
  return out
}

/// Registers every built-in scheduler; none takes options.
public func registerBuiltinSchedulers(in registry: PluginRegistry) {
  for name in builtinSchedulerNames {
    registry.registerScheduler(name) { options, seed in
      guard options.isEmpty else {
        throw SchedulerError(
          "scheduler \"\(name)\" takes no options; found \(options.keys.sorted().joined(separator: ", "))")
      }
      return makeBuiltinScheduler(name, seed: seed)!
    }
  }
}
