import CHydraPlugin
import Foundation
import HydraRuntime

/// A scheduler of a plugin library as a `Scheduler`: the view goes to C as plain arrays, and the
/// answer comes back as (ready index, device) pairs, checked before the runtime sees it.
final class CScheduler: Scheduler {
  let name: String
  let file: String
  private let table: hydra_scheduler
  private let instance: UnsafeMutableRawPointer?
  private let owned: Bool

  init(_ table: hydra_scheduler, name: String, file: String, options: [String: ConfigValue], seed: UInt64) throws {
    var instance = table.context
    if let create = table.create {
      var error = hydra_error()
      var made: UnsafeMutableRawPointer?
      let code = withCOptions(options) { create(table.context, $0, $1, seed, &made, &error) }
      if code == HYDRA_ERROR_INPUT {
        // Bad `[scheduler]` options: the runtime adds the job file and line.
        throw SchedulerError("scheduler \"\(name)\" (plugin \(file)): \(pluginMessage(error))")
      }
      guard code == HYDRA_OK else {
        throw PluginError(
          file: file, kind: "scheduler", name: name, "create failed (code \(code)): \(pluginMessage(error))")
      }
      instance = made
    } else if !options.isEmpty {
      throw SchedulerError(
        "scheduler \"\(name)\" (plugin \(file)) takes no options; found \(options.keys.sorted().joined(separator: ", "))"
      )
    }
    self.table = table
    self.name = name
    self.file = file
    self.instance = instance
    self.owned = table.create != nil
  }

  deinit {
    if owned { table.destroy?(instance) }
  }

  /// The runtime calls `trySchedule`; this answer is only for callers that cannot take an error.
  func schedule(_ view: SchedulerView) -> [Assignment] { (try? trySchedule(view)) ?? [] }

  func trySchedule(_ view: SchedulerView) throws -> [Assignment] {
    let capacity = min(view.ready.count, view.freeDevices.count)
    guard capacity > 0 else { return [] }
    // Every task's allowed devices, one after another (a sentinel keeps the buffer non-empty, so
    // that an empty list is a non-NULL pointer with count 0, not NULL = any device).
    var allowed: [Int64] = []
    var spans: [(start: Int, count: Int)?] = []
    for r in view.ready {
      if let a = r.allowedDevices {
        spans.append((allowed.count, a.count))
        allowed += a.map { Int64($0) }
      } else {
        spans.append(nil)
      }
    }
    allowed.append(-1)
    let free = view.freeDevices.map { Int64($0) }
    let finished = view.finished.sorted().map { Int64($0) } + [-1]
    var out = [hydra_assignment](repeating: hydra_assignment(), count: capacity)
    var count: Int64 = -1
    var error = hydra_error()
    let code = allowed.withUnsafeBufferPointer { allowedBuffer in
      var tasks = [hydra_ready_task]()
      tasks.reserveCapacity(view.ready.count)
      for (r, span) in zip(view.ready, spans) {
        var t = hydra_ready_task()
        t.model = Int64(r.task.model)
        t.shard = Int64(r.task.shard)
        t.direction = r.task.direction == .forward ? HYDRA_FORWARD : HYDRA_BACKWARD
        t.step = Int64(r.task.step)
        t.estimated_seconds = r.estimatedSeconds
        t.remaining_seconds = r.remainingSeconds
        t.state_device = -1
        switch r.state {
        case .host: t.state = HYDRA_STATE_HOST
        case .disk: t.state = HYDRA_STATE_DISK
        case .elsewhere: t.state = HYDRA_STATE_ELSEWHERE
        case .device(let d):
          t.state = HYDRA_STATE_DEVICE
          t.state_device = Int64(d)
        }
        t.last_device = r.lastDevice.map { Int64($0) } ?? -1
        t.ready_since = r.readySince
        t.shard_count = Int64(r.shardCount)
        t.home = r.home.map { Int64($0) } ?? -1
        if let span {
          t.allowed_devices = allowedBuffer.baseAddress! + span.start
          t.allowed_count = Int64(span.count)
        }
        t.move_bytes = Int64(r.moveBytes)
        t.move_seconds = r.moveSeconds
        tasks.append(t)
      }
      return tasks.withUnsafeBufferPointer { taskBuffer in
        free.withUnsafeBufferPointer { freeBuffer in
          finished.withUnsafeBufferPointer { finishedBuffer in
            var v = hydra_scheduler_view(
              now: view.now, ready: taskBuffer.baseAddress, ready_count: Int64(taskBuffer.count),
              free_devices: freeBuffer.baseAddress, free_count: Int64(freeBuffer.count),
              device_count: Int64(view.deviceCount), model_count: Int64(view.modelCount),
              finished: finishedBuffer.baseAddress, finished_count: Int64(finishedBuffer.count - 1))
            return table.schedule!(instance, &v, &out, Int64(capacity), &count, &error)
          }
        }
      }
    }
    guard code == HYDRA_OK else {
      throw PluginError(
        file: file, kind: "scheduler", name: name, "schedule failed (code \(code)): \(pluginMessage(error))")
    }
    guard (0...Int64(capacity)).contains(count) else {
      throw PluginError(
        file: file, kind: "scheduler", name: name, "returned \(count) assignments; at most \(capacity) fit")
    }
    var assignments: [Assignment] = []
    for a in out.prefix(Int(count)) {
      guard (0..<Int64(view.ready.count)).contains(a.ready_index) else {
        throw PluginError(
          file: file, kind: "scheduler", name: name,
          "assigned ready task \(a.ready_index), but only \(view.ready.count) are ready (indices 0..<\(view.ready.count))"
        )
      }
      guard (0..<Int64(view.deviceCount)).contains(a.device) else {
        throw PluginError(
          file: file, kind: "scheduler", name: name,
          "assigned device \(a.device), but the job has \(view.deviceCount) devices (0..<\(view.deviceCount))")
      }
      assignments.append(Assignment(task: view.ready[Int(a.ready_index)].task, device: Int(a.device)))
    }
    do {
      try validate(assignments, against: view, scheduler: name)
    } catch let e as SchedulerError {
      throw PluginError(file: file, kind: "scheduler", name: name, e.description)
    }
    return assignments
  }
}
