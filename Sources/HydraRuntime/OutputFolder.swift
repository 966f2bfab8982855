import Foundation
import HydraCore

/// The job's output folder: `job.toml` (resolved), `metrics.csv` (appended as training goes, so an
/// interrupted run keeps what it measured), `summary.json`, `trace.json`, `checkpoints/<model>/` and
/// `tensorboard/<model>/`, each model's rows again as TensorBoard event files.
public final class OutputFolder {
  public let path: String
  private var metrics: FileHandle
  /// Each model's event file of this run, made at its first row.
  private var events: [String: EventFile] = [:]
  /// The step each model resumed at (a resumed run); its event file starts past it.
  private var resumedAt: [String: Int] = [:]

  /// Creates the folder (and parents) and starts `metrics.csv`. Called only after the job has been
  /// validated and its data loaded, so that bad input leaves nothing behind.
  /// With `append`, an existing `metrics.csv` is continued (a resumed run).
  public init(path: String, resolvedJob: String, append: Bool = false) throws {
    self.path = path
    do {
      try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
      try writeAtomically(resolvedJob, to: path + "/job.toml")
      // Why an earlier run of this folder failed (a distributed job's rank 0 writes it): not this run's.
      try? FileManager.default.removeItem(atPath: path + "/failure.txt")
      let csv = path + "/metrics.csv"
      if !(append && FileManager.default.fileExists(atPath: csv)) {
        _ = FileManager.default.createFile(
          atPath: csv, contents: Data("model,step,split,loss,accuracy,lr,seconds\n".utf8))
      }
      guard let handle = FileHandle(forWritingAtPath: csv) else { throw RuntimeError("cannot open \(csv)") }
      handle.seekToEndOfFile()
      metrics = handle
    } catch let error as RuntimeError {
      throw error
    } catch {
      throw RuntimeError("cannot create the output folder \(path): \(error.localizedDescription)")
    }
  }

  deinit { try? metrics.close() }

  public func checkpointFolder(_ model: String) -> String { path + "/checkpoints/" + model }

  /// `tensorboard --logdir` this folder: one run per model.
  public var tensorBoardFolder: String { path + "/tensorboard" }

  /// A resumed run: `metrics.csv` keeps each model's rows up to the step it resumed at (0 for a
  /// model that starts afresh) and loses those of the steps it will train again, which a run
  /// stopped after its last checkpoint had recorded. The event files of the run before are left as
  /// they are: this run's start past `steps` tells TensorBoard to drop their later steps.
  public func keepMetrics(upTo steps: [String: Int]) throws {
    resumedAt = steps
    let csv = path + "/metrics.csv"
    guard let text = try? String(contentsOfFile: csv, encoding: .utf8) else { return }
    var lines = text.split(separator: "\n", omittingEmptySubsequences: true)
    guard !lines.isEmpty else { return }
    let header = lines.removeFirst()
    let kept = lines.filter { row in
      let fields = row.split(separator: ",", maxSplits: 2)
      guard fields.count >= 2, let step = Int(fields[1]) else { return false }
      return step <= steps[String(fields[0])] ?? 0
    }
    try? metrics.close()
    try writeAtomically(([header] + kept).joined(separator: "\n") + "\n", to: csv)
    guard let handle = FileHandle(forWritingAtPath: csv) else { throw RuntimeError("cannot open \(csv)") }
    handle.seekToEndOfFile()
    metrics = handle
  }

  /// One row of `metrics.csv`. `accuracy` is empty where it does not apply (train rows).
  /// The same row goes to the model's event file: `loss/<split>`, `accuracy/<split>` where there is
  /// one, and `lr` with the train rows (a val row's rate is its train row's).
  public func record(
    model: String, step: Int, split: String, loss: Double, accuracy: Double?, lr: Float, seconds: Double
  ) throws {
    let acc = accuracy.map { String(format: "%.6f", $0) } ?? ""
    let line =
      "\(model),\(step),\(split),\(String(format: "%.6f", loss)),\(acc),\(lr),\(String(format: "%.3f", seconds))\n"
    do {
      try metrics.write(contentsOf: Data(line.utf8))
    } catch {
      throw WriteError(file: path + "/metrics.csv", "cannot append a row: \(error.localizedDescription)")
    }
    var scalars = [(tag: "loss/\(split)", value: Float(loss))]
    if let accuracy { scalars.append((tag: "accuracy/\(split)", value: Float(accuracy))) }
    if split == "train" { scalars.append((tag: "lr", value: lr)) }
    try eventFile(model).add(step: step, scalars)
  }

  private func eventFile(_ model: String) throws -> EventFile {
    if let file = events[model] { return file }
    let file = try EventFile(folder: tensorBoardFolder + "/" + model, firstStep: (resumedAt[model] ?? 0) + 1)
    events[model] = file
    return file
  }

  /// Closes the event files (a `WriteError` where one fails to close); `deinit` closes them too.
  public func finishEventFiles() throws {
    let files = events.values
    events = [:]
    for file in files { try file.finish() }
  }

  /// `summary.json`: the job, its makespan (training time without start-up and data loading), the
  /// wall seconds of the run's phases (`JobRunner.run`: plan, build, start, train, end) and per
  /// model its id, overrides, status, steps, last train loss, last validation loss and accuracy,
  /// seconds and shards.
  public func writeSummary(
    job: String, makespan: Double, phases: [String: Double] = [:], models: [[String: Any]],
    memory: [String: Any] = [:], coordinator: [String: Any] = [:], selection: [String: Any]? = nil
  ) throws {
    var summary: [String: Any] = [
      "job": job, "makespan_seconds": makespan, "models": models, "memory": memory, "coordinator": coordinator,
    ]
    if !phases.isEmpty { summary["phases"] = phases }
    if let selection { summary["selection"] = selection }
    let data = try JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys])
    try writeAtomically(String(decoding: data, as: UTF8.self) + "\n", to: path + "/summary.json")
  }

  /// An SVG picture (`schedule.svg`, `loss.svg`).
  public func writePicture(_ name: String, _ svg: String) throws {
    try writeAtomically(svg, to: path + "/" + name)
  }

  /// `trace.json` in Chrome's trace-event format: one lane (tid) per device, one complete event
  /// ("ph": "X", microseconds) per shard task. Opens in Perfetto and chrome://tracing.
  /// Written by hand: a long run has millions of events, and building them as Foundation
  /// dictionaries took longer than the run (8 s and 490 MB for 96k events).
  public func writeTrace(_ events: [TraceEvent], devices: Int) throws {
    try writeAtomically(Self.traceJSON(events, devices: devices), to: path + "/trace.json")
  }

  /// The text of `trace.json` (also what `hydra-mpi plan --output` writes for a simulated run).
  public static func traceJSON(_ events: [TraceEvent], devices: Int) -> String {
    var out = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":["
    out.reserveCapacity(120 * (events.count + devices) + 64)
    // Lanes past the devices' are their writer threads' (`Coordinator.recordOffDeviceWork`).
    let lanes = max(devices, (events.map(\.device).max() ?? -1) + 1)
    for d in 0..<lanes {
      let name = d < devices ? "device \(d)" : "device \(devices > 0 ? d % devices : d) writer"
      out +=
        "\(d == 0 ? "" : ",")\n{\"args\":{\"name\":\"\(name)\"},\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":\(d)}"
    }
    for (i, e) in events.enumerated() {
      // Whole microseconds; the duration from the rounded ends, so that boxes that touch still touch.
      let ts = microseconds(e.start), dur = microseconds(e.end) - ts
      let model = jsonString(e.model), task = jsonString(e.name)
      out += "\(i + lanes == 0 ? "" : ",")\n{\"args\":{\"model\":\(model),\"step\":\(e.step),\"task\":\(task)},"
      out +=
        "\"cat\":\"\(e.name == "eval" || e.name == "checkpoint" ? e.name : "shard")\",\"dur\":\(dur),\"name\":\(jsonString(e.model + " " + e.name)),"
      out += "\"ph\":\"X\",\"pid\":0,\"tid\":\(e.device),\"ts\":\(ts)}"
    }
    out += "\n]}\n"
    return out
  }
}

/// Seconds as whole microseconds (a time is measured from the job's start: finite and small).
private func microseconds(_ seconds: Double) -> Int64 {
  let us = (seconds * 1e6).rounded()
  return us.isFinite ? Int64(max(min(us, 9e15), -9e15)) : 0
}
