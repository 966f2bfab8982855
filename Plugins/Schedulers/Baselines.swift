import HydraPluginAPI

/// The model that may run under a one-model-at-a-time baseline, and its ready task if it has one.
///
/// It is the lowest-index model not in `view.finished`. A runtime that does not fill `finished` is
/// still served: when nothing runs at all (every device free) and that model has no ready task, it
/// cannot be running, so it has finished and the lowest-index ready model is the current one.
func currentTask(_ view: SchedulerView) -> ReadyTask? {
  let current = view.firstUnfinishedModel
  if let current, let t = view.readyTask(ofModel: current) { return t }
  guard view.freeDevices.count >= view.deviceCount else { return nil }  // the current model runs
  if let index = view.readyIndex { return index.count > 0 ? index[model: index.model(atRank: 0)] : nil }
  return view.ready.min { $0.task.model < $1.task.model }
}

/// Baseline: one model at a time, every task on device 0; the other devices stay idle. Its makespan
/// is the sum of all task times.
public final class SequentialScheduler: Scheduler {
  public let name = "sequential"
  public init() {}

  public func schedule(_ view: SchedulerView) -> [Assignment] {
    guard let t = currentTask(view) else { return [] }
    let d = allowedDevice(0, for: t)
    return view.freeDevices.contains(d) ? [Assignment(task: t.task, device: d)] : []
  }
}

/// Baseline, what users do without Hydra: one model at a time, its shards pinned across the devices
/// (shard s on device s % deviceCount, waiting for that device if it is busy). The chain is strict,
/// so all devices but one are idle: the makespan is the sum of all task times, as `sequential`.
public final class ModelParallelScheduler: Scheduler {
  public let name = "model-parallel"
  public init() {}

  public func schedule(_ view: SchedulerView) -> [Assignment] {
    guard view.deviceCount > 0, let t = currentTask(view) else { return [] }
    let d = allowedDevice(t.task.shard % view.deviceCount, for: t)
    return view.freeDevices.contains(d) ? [Assignment(task: t.task, device: d)] : []
  }
}
