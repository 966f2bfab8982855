import Foundation
import HydraConfig
import HydraCore

/// Runs the job's selection policy (`[selection]`) on the coordinator's process: tells it each
/// model's result at each rung and each model that ended, and keeps the record of what it was told
/// and decided in `<output>/selection.json`, rewritten (atomically) after every call, so that a
/// resumed run tells a fresh policy the same things in the same order and gets the same decisions.
public final class SelectionDriver {
  public let policy: Selection
  public let section: SelectionSection
  /// Model ids, by index.
  private let ids: [String]
  private let rungSteps: [[Int]]
  private let lock = NSLock()
  /// What the policy was told, in order, with what it decided.
  public private(set) var events: [Event] = []
  /// The last decision for each model (none: it never reached a rung).
  public private(set) var latest: [Int: SelectionDecision] = [:]
  /// Where the record lives; nil: kept in memory only.
  public var path: String?

  public struct Event: Equatable, Sendable {
    public var model: Int
    /// The result it reached, or nil: the model ended (finished or diverged) without one.
    public var result: RungResult?
    public var decisions: [Int: SelectionDecision]
  }

  public init(policy: Selection, section: SelectionSection, ids: [String], rungSteps: [[Int]]) throws {
    self.policy = policy
    self.section = section
    self.ids = ids
    self.rungSteps = rungSteps
    try policy.start(
      SelectionSetup(
        models: ids.count, rungSteps: rungSteps, reductionFactor: section.reductionFactor, options: section.options))
  }

  /// The model at index `model` reached rung `rung` (its `step`) with `evaluation`; returns the
  /// decisions, the reporting model's included (`proceed` unless the policy said otherwise).
  public func reached(model: Int, step: Int, evaluation: Evaluation) throws -> [Int: SelectionDecision] {
    guard let rung = rungSteps[model].firstIndex(of: step) else { return [:] }
    let result = RungResult(
      model: model, rung: rung, step: step,
      score: section.metric.score(loss: evaluation.loss, accuracy: evaluation.accuracy))
    return try record(Event(model: model, result: result, decisions: [:]))
  }

  /// The model ended (finished, or diverged) without reaching another rung.
  public func ended(model: Int) throws -> [Int: SelectionDecision] {
    try record(Event(model: model, result: nil, decisions: [:]))
  }

  /// Whether the record holds `model`'s result at `step` already (a resumed run that trained to
  /// that rung again: the policy is not told twice).
  public func knows(model: Int, step: Int) -> Bool {
    lock.lock()
    defer { lock.unlock() }
    return events.contains { $0.model == model && $0.result?.step == step }
  }

  private func record(_ event: Event) throws -> [Int: SelectionDecision] {
    lock.lock()
    defer { lock.unlock() }
    var decisions = event.result.map { policy.reached($0) } ?? policy.ended(model: event.model)
    if event.result != nil && decisions[event.model] == nil { decisions[event.model] = .proceed }
    for m in decisions.keys where m < 0 || m >= ids.count {
      throw RuntimeError("selection \"\(policy.name)\" decided for model \(m); the job has \(ids.count)")
    }
    var done = event
    done.decisions = decisions
    events.append(done)
    for (m, d) in decisions { latest[m] = d }
    if let path { try write(to: path) }
    return decisions
  }

  // MARK: selection.json

  private func number(_ x: Double) -> String {
    x.isFinite ? "\(x)" : x > 0 ? "\"inf\"" : x < 0 ? "\"-inf\"" : "\"nan\""
  }

  /// The record as JSON: the settings it was made under, then the events in order.
  public func json() -> String {
    var lines: [String] = []
    for e in events {
      var fields = ["\"model\": \(jsonString(ids[e.model]))"]
      if let r = e.result {
        fields += ["\"rung\": \(r.rung)", "\"step\": \(r.step)", "\"score\": \(number(r.score))"]
      } else {
        fields.append("\"ended\": true")
      }
      let decisions = e.decisions.keys.sorted().map {
        "\(jsonString(ids[$0])): \(jsonString(e.decisions[$0]!.rawValue))"
      }
      fields.append("\"decisions\": {\(decisions.joined(separator: ", "))}")
      lines.append("    {" + fields.joined(separator: ", ") + "}")
    }
    return """
      {
        "policy": \(jsonString(policy.name)),
        "metric": \(jsonString(section.metric.rawValue)),
        "min_steps": \(section.minSteps),
        "reduction_factor": \(section.reductionFactor),
        "depends_on_timing": \(policy.dependsOnTiming),
        "events": [
      \(lines.joined(separator: ",\n"))
        ]
      }

      """
  }

  private func write(to path: String) throws {
    do {
      try writeAtomically(json(), to: path)
    } catch {
      throw WriteError(file: path, "\(error)")
    }
  }

  /// A resumed run: tells the (fresh) policy what the record at `path` says it was told, in the same
  /// order, and checks it decides the same. A missing file is an empty record.
  public func replay(from path: String) throws {
    guard FileManager.default.fileExists(atPath: path) else { return }
    func bad(_ why: String) -> InputError {
      InputError(
        file: path,
        "\(why); this file is the record of the job's early stopping (delete the output folder to start afresh)")
    }
    guard let data = FileManager.default.contents(atPath: path) else { throw bad("cannot be read") }
    guard let top = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
      throw bad("is not a JSON object")
    }
    guard top["policy"] as? String == policy.name, top["metric"] as? String == section.metric.rawValue,
      (top["min_steps"] as? NSNumber)?.intValue == section.minSteps,
      (top["reduction_factor"] as? NSNumber)?.intValue == section.reductionFactor
    else {
      throw bad("was made under other [selection] settings than the job's")
    }
    guard let list = top["events"] as? [[String: Any]] else { throw bad("has no list of events") }
    for (n, e) in list.enumerated() {
      guard let id = e["model"] as? String, let model = ids.firstIndex(of: id) else {
        throw bad("event \(n + 1) names no model of this job")
      }
      var event = Event(model: model, result: nil, decisions: [:])
      if e["ended"] as? Bool != true {
        guard let rung = (e["rung"] as? NSNumber)?.intValue, let step = (e["step"] as? NSNumber)?.intValue,
          rung >= 0, rung < rungSteps[model].count, rungSteps[model][rung] == step
        else { throw bad("event \(n + 1): no rung of \(id) at that step") }
        let score: Double
        switch e["score"] {
        case let x as NSNumber: score = x.doubleValue
        case "inf" as String: score = .infinity
        case "-inf" as String: score = -.infinity
        default: throw bad("event \(n + 1): the score is not a number")
        }
        event.result = RungResult(model: model, rung: rung, step: step, score: score)
      }
      guard let said = e["decisions"] as? [String: String] else { throw bad("event \(n + 1) has no decisions") }
      var expected: [Int: SelectionDecision] = [:]
      for (key, value) in said {
        guard let m = ids.firstIndex(of: key), let d = SelectionDecision(rawValue: value) else {
          throw bad("event \(n + 1): the decision \(key) = \(value) is not one of this job's")
        }
        expected[m] = d
      }
      let saved = path
      self.path = nil
      defer { self.path = saved }
      let decided = try record(event)
      guard decided == expected else {
        throw bad(
          "event \(n + 1): told again, policy \"\(policy.name)\" decides otherwise than it did (it must decide from what it is told alone)"
        )
      }
    }
  }
}
