import Foundation
import HydraCore

/// One box of the trace: a shard task (or an evaluation) on a device, in seconds since the start.
public struct TraceEvent: Sendable {
  public var device: Int
  public var model: String
  public var name: String  // "s2 fwd", "s0 bwd", "eval"
  public var step: Int
  public var start: Double
  public var end: Double
}

/// Hands shard tasks to devices and records what ran where.
///
/// This is the `sequential` order: each device trains whole models, one after another, taking the
/// next untrained model when it is free (with one device: model by model). Within a model the order
/// is fixed by its chain, so results do not depend on which device ran it; shard-level scheduling
/// across devices plugs in here.
public final class Coordinator {
  public let runs: [ModelRun]
  public let devices: [Device]
  /// Called on the device's thread after each completed step (evaluation, checkpoints, progress),
  /// and once when a model diverges.
  public var afterStep: (ModelRun, Device) throws -> Void = { _, _ in }
  private var _trace: [TraceEvent] = []
  private let lock = NSLock()
  private var nextModel = 0
  private var failure: Error?
  private var origin = Date()

  /// Bring the next task's shard off disk while the current task computes.
  public let doubleBuffering: Bool

  public init(runs: [ModelRun], devices: [Device], doubleBuffering: Bool = true) {
    precondition(!devices.isEmpty)
    self.doubleBuffering = doubleBuffering
    self.runs = runs
    self.devices = devices
  }

  public var trace: [TraceEvent] { lock.lock(); defer { lock.unlock() }; return _trace }

  public func elapsed() -> Double { Date().timeIntervalSince(origin) }

  /// Trains every model; returns the makespan in seconds. The first error stops every device
  /// after its current task and is rethrown.
  public func run() throws -> Double {
    origin = Date()
    nextModel = 0
    if devices.count == 1 {
      work(devices[0])
    } else {
      DispatchQueue.concurrentPerform(iterations: devices.count) { work(devices[$0]) }
    }
    if let failure { throw failure }
    return elapsed()
  }

  private func claimModel() -> ModelRun? {
    lock.lock()
    defer { lock.unlock() }
    guard failure == nil, nextModel < runs.count else { return nil }
    nextModel += 1
    return runs[nextModel - 1]
  }

  private func work(_ device: Device) {
    while let run = claimModel() {
      let modelStart = elapsed()
      do {
        while let task = run.nextTask {
          if stopped { return }
          let start = elapsed()
          if doubleBuffering, let after = run.taskAfterNext, after.shard != task.shard {
            run.prefetch(after.shard, keeping: task.shard)
          }
          let completed = try run.run(task, kernels: device.kernels, device: device.index)
          append(
            TraceEvent(
              device: device.index, model: run.id,
              name: "s\(task.shard) \(task.direction == .forward ? "fwd" : "bwd")", step: task.step,
              start: start, end: elapsed()))
          if completed || run.status.name == "diverged" { try afterStep(run, device) }
        }
      } catch {
        lock.lock()
        if failure == nil { failure = error }
        lock.unlock()
        return
      }
      run.seconds = elapsed() - modelStart
    }
  }

  private var stopped: Bool { lock.lock(); defer { lock.unlock() }; return failure != nil }

  private func append(_ event: TraceEvent) {
    lock.lock()
    _trace.append(event)
    lock.unlock()
  }

  /// Records an evaluation box on the trace.
  public func recordEvaluation(of run: ModelRun, on device: Device, start: Double) {
    append(TraceEvent(device: device.index, model: run.id, name: "eval", step: run.step, start: start, end: elapsed()))
  }
}
