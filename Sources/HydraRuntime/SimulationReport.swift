import Foundation

/// What `hydra-mpi plan --output DIR` writes for one scheduler's simulated run, like a real run's
/// output folder: `trace.json` (Perfetto), `schedule.svg`, and `plan.json` with the makespan, each
/// device's utilisation, the bytes moved and each model's finish time.
public enum SimulationReport {
  /// The simulated tasks as trace events (model ids from `modelIDs`).
  public static func traceEvents(_ r: SimulationResult, modelIDs: [String]) -> [TraceEvent] {
    func id(_ m: Int) -> String { m < modelIDs.count ? modelIDs[m] : "m\(m)" }
    return r.intervals.map { i in
      TraceEvent(
        device: i.device, model: id(i.model), name: "s\(i.task.shard) \(i.task.direction == .forward ? "fwd" : "bwd")",
        step: i.task.step, start: i.start, end: i.end)
    }
      + r.evaluations.map { e in
        TraceEvent(device: e.device, model: id(e.model), name: "eval", step: e.step, start: e.start, end: e.end)
      }
      + r.checkpoints.map { e in
        TraceEvent(device: e.device, model: id(e.model), name: "checkpoint", step: e.step, start: e.start, end: e.end)
      }
  }

  /// `plan.json`'s text.
  public static func json(_ r: SimulationResult, scheduler: String, modelIDs: [String]) -> String {
    func number(_ x: Double) -> String { x.isFinite ? "\(x)" : "null" }
    var lines = [
      "{", "  \"scheduler\": \(quoted(scheduler)),", "  \"makespan_seconds\": \(number(r.makespan)),",
      "  \"devices\": \(r.deviceCount),", "  \"utilisation\": \(number(r.utilisation)),",
      "  \"device_utilisation\": [\(r.deviceUtilisation.map(number).joined(separator: ", "))],",
      "  \"moves\": \(r.moves),", "  \"moved_bytes\": \(r.movedBytes),", "  \"decisions\": \(r.decisions),",
      "  \"models\": [",
    ]
    lines.append(
      r.finishTimes.enumerated().map { m, t in
        "    {\"id\": \(quoted(m < modelIDs.count ? modelIDs[m] : "m\(m)")), \"finish_seconds\": \(number(t))}"
      }.joined(separator: ",\n"))
    lines += ["  ]", "}"]
    return lines.joined(separator: "\n") + "\n"
  }

  /// Writes the three files into `folder` (made if missing).
  public static func write(
    _ r: SimulationResult, scheduler: String, modelIDs: [String], title: String, to folder: String
  ) throws {
    do {
      try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
      let events = traceEvents(r, modelIDs: modelIDs)
      try writeAtomically(OutputFolder.traceJSON(events, devices: r.deviceCount), to: folder + "/trace.json")
      try writeAtomically(Charts.schedule(events, devices: r.deviceCount, title: title), to: folder + "/schedule.svg")
      try writeAtomically(json(r, scheduler: scheduler, modelIDs: modelIDs), to: folder + "/plan.json")
    } catch {
      throw WriteError(file: folder, "cannot write the simulated schedule: \(error)")
    }
  }

  private static func quoted(_ s: String) -> String {
    let data = try? JSONEncoder().encode([s])
    let array = data.flatMap { String(data: $0, encoding: .utf8) } ?? "[\"\"]"
    return String(array.dropFirst().dropLast())
  }
}
