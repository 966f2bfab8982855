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
/// This is the single-device path: each model's chain runs to its end before the next model
/// starts (the `sequential` order). Within a model, order is fixed by the chain, so the results do
/// not depend on this choice; multi-device scheduling plugs in here.
public final class Coordinator {
  public let runs: [ModelRun]
  public let devices: [Device]
  /// Called on the device after each completed step (evaluation, checkpoints, progress).
  public var afterStep: (ModelRun, Device) throws -> Void = { _, _ in }
  public private(set) var trace: [TraceEvent] = []
  private var origin = Date()

  public init(runs: [ModelRun], devices: [Device]) {
    precondition(!devices.isEmpty)
    self.runs = runs
    self.devices = devices
  }

  public func elapsed() -> Double { Date().timeIntervalSince(origin) }

  /// Trains every model; returns the makespan in seconds.
  public func run() throws -> Double {
    origin = Date()
    let device = devices[0]
    for run in runs {
      let modelStart = elapsed()
      while let task = run.nextTask {
        let start = elapsed()
        let completed = try run.run(task, kernels: device.kernels)
        trace.append(
          TraceEvent(
            device: device.index, model: run.id,
            name: "s\(task.shard) \(task.direction == .forward ? "fwd" : "bwd")", step: task.step,
            start: start, end: elapsed()))
        if completed || run.status.name == "diverged" { try afterStep(run, device) }
      }
      run.seconds = elapsed() - modelStart
    }
    return elapsed()
  }

  /// Records an evaluation box on the trace.
  public func recordEvaluation(of run: ModelRun, on device: Device, start: Double) {
    trace.append(
      TraceEvent(device: device.index, model: run.id, name: "eval", step: run.step, start: start, end: elapsed()))
  }
}
