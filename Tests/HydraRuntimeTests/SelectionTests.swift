import Foundation
import HydraConfig
import HydraCore
import XCTest

@testable import HydraRuntime

/// Early stopping, against the exactness invariant: a model the policy keeps trains exactly as in
/// the full sweep, and which models stop follows from the full sweep's own validation results by
/// the policy's rule, worked out here independently.
final class SelectionTests: XCTestCase {
  // Every run here also checks the coordinator's ready index against a rebuild from every model.
  override func setUp() { Coordinator.checksReadyIndex = true }
  override func tearDown() { Coordinator.checksReadyIndex = false }

  static let sweep = repositoryRoot + "/Tests/mpi/sweep.toml"
  /// Ten steps; rungs at 2, 4 and 8 (min_steps 2, eta 2).
  static let base = [
    "cluster.backend=\"shm\"", "train.steps=10", "train.eval_every=0", "train.checkpoint_every=0",
    "selection.min_steps=2", "selection.reduction_factor=2",
  ]
  static let rungs = [2, 4, 8]

  func run(
    _ overrides: [String], output: String, pauseAt: Int? = nil, resume: Bool = false
  ) throws -> (result: JobRunner.Result, summary: [String: Any]) {
    let config = try JobConfig.load(
      path: Self.sweep, known: testKnownPlugins(), overrides: Self.base + overrides + ["job.output=\"\(output)\""])
    let runner = JobRunner(config: config, registry: testRegistry())
    runner.log = { _ in }
    runner.pauseAt = pauseAt
    runner.resume = resume
    let result = try runner.run()
    let data = try Data(contentsOf: URL(fileURLWithPath: output + "/summary.json"))
    return (result, try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any]))
  }

  /// The full sweep with evaluations and checkpoints at every even step, made once.
  nonisolated(unsafe) static var full: (output: String, losses: [[Int: Double]])?
  func fullSweep() throws -> (output: String, losses: [[Int: Double]]) {
    if let full = Self.full { return full }
    let output = try temporaryFolder() + "/full"
    let (result, _) = try run(
      [
        "selection.name=\"none\"", "train.eval_every=2", "train.checkpoint_every=2", "train.keep_checkpoints=10",
        "cluster.devices=2",
      ],
      output: output)
    let losses = result.runs.map { run in Dictionary(uniqueKeysWithValues: run.evaluations.map { ($0.step, $0.loss) }) }
    Self.full = (output, losses)
    return (output, losses)
  }

  /// Successive halving by hand: at each rung the models still in, ranked by validation loss (ties
  /// to the lower index), keep max(1, n / eta); returns the step each model stops at (nil: never).
  func successiveHalving(_ losses: [[Int: Double]], eta: Int) -> [Int?] {
    var alive = Array(losses.indices)
    var stoppedAt = [Int?](repeating: nil, count: losses.count)
    for step in Self.rungs {
      let ranked = alive.sorted { (losses[$0][step]!, $0) < (losses[$1][step]!, $1) }
      let keep = max(1, ranked.count / eta)
      for m in ranked.dropFirst(keep) { stoppedAt[m] = step }
      alive = Array(ranked.prefix(keep))
    }
    return stoppedAt
  }

  func unit(_ folder: String, _ model: String, step: Int) -> String {
    folder + "/checkpoints/\(model)/" + Checkpoint.unitName(step)
  }

  /// Every file of a checkpoint unit the same bytes in both.
  func assertSameUnit(_ a: String, _ b: String, _ label: String, file: StaticString = #filePath, line: UInt = #line)
    throws
  {
    let tensors = { (folder: String) in
      try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasSuffix(".safetensors") }.sorted()
    }
    let files = try tensors(a)
    XCTAssertEqual(files, try tensors(b), label, file: file, line: line)
    XCTAssertFalse(files.isEmpty, label, file: file, line: line)
    for f in files {
      XCTAssertEqual(
        try Data(contentsOf: URL(fileURLWithPath: a + "/" + f)),
        try Data(contentsOf: URL(fileURLWithPath: b + "/" + f)),
        "\(label): \(f)", file: file, line: line)
    }
  }

  /// What a selection run must show: each model stopped where `expected` says (or trained to the
  /// end), and every checkpoint it has at its last step the bytes of the full sweep's at that step.
  func assertOutcome(
    _ result: JobRunner.Result, _ output: String, expected: [Int?], _ label: String, file: StaticString = #filePath,
    line: UInt = #line
  ) throws {
    let full = try fullSweep()
    for run in result.runs {
      if let step = expected[run.index] {
        XCTAssertEqual(run.status, .stopped(step: step), "\(label): \(run.id)", file: file, line: line)
      } else {
        XCTAssertEqual(run.status, .done, "\(label): \(run.id)", file: file, line: line)
      }
      try assertSameUnit(
        unit(full.output, run.id, step: run.step), unit(output, run.id, step: run.step), "\(label): \(run.id)",
        file: file, line: line)
    }
  }

  func testSuccessiveHalvingStopsWhatTheRuleSaysAndKeepsTheSurvivorsExact() throws {
    let full = try fullSweep()
    let expected = successiveHalving(full.losses, eta: 2)
    // Four models, eta 2: two stop at the first rung, one at the second, one trains on.
    XCTAssertEqual(expected.filter { $0 == 2 }.count, 2)
    XCTAssertEqual(expected.filter { $0 == 4 }.count, 1)
    XCTAssertEqual(expected.filter { $0 == nil }.count, 1)
    let root = try temporaryFolder()
    for (devices, scheduler) in [(2, "lrtf"), (3, "random"), (1, "sequential")] {
      let label = "sha, \(devices) devices, \(scheduler)"
      let output = root + "/\(devices)-\(scheduler)"
      let (result, summary) = try run(
        ["selection.name=\"sha\"", "cluster.devices=\(devices)", "scheduler.name=\"\(scheduler)\""], output: output)
      try assertOutcome(result, output, expected: expected, label)
      let selection = try XCTUnwrap(summary["selection"] as? [String: Any])
      XCTAssertEqual(selection["depends_on_timing"] as? Bool, false)
      XCTAssertEqual(
        selection["steps_trained"] as? Int, expected.reduce(0) { $0 + ($1 ?? 10) }, "\(label): steps trained")
      // Each model's rung history: its loss at each rung it reached, as the full sweep measured it.
      for (m, model) in (summary["models"] as? [[String: Any]] ?? []).enumerated() {
        let rungs = model["rungs"] as? [[String: Any]] ?? []
        let reached = Self.rungs.filter { $0 <= (expected[m] ?? 10) }
        XCTAssertEqual(rungs.compactMap { $0["step"] as? Int }, reached, "\(label): m\(m) rungs")
        // summary.json's numbers are Foundation's JSON, 16 significant digits: equal to the last
        // place or so (the policy itself saw the exact values; the bytes above show it chose alike).
        for r in rungs {
          let loss = try XCTUnwrap(r["val_loss"] as? Double),
            reference = try XCTUnwrap(full.losses[m][r["step"] as! Int])
          XCTAssertEqual(loss, reference, accuracy: 1e-13 * abs(reference), "\(label): m\(m)")
        }
        XCTAssertEqual(rungs.last?["decision"] as? String, expected[m] == nil ? "proceed" : "stop")
      }
    }
  }

  /// ASHA decides each result as it comes: nothing ever waits, and every model it keeps is exact.
  func testAsyncSuccessiveHalvingNeverHoldsAModel() throws {
    let output = try temporaryFolder() + "/asha"
    let (result, summary) = try run(["selection.name=\"asha\"", "cluster.devices=2"], output: output)
    let models = summary["models"] as? [[String: Any]] ?? []
    XCTAssertFalse(models.contains { ($0["rungs"] as? [[String: Any]] ?? []).contains { $0["waited"] != nil } })
    XCTAssertEqual((summary["selection"] as? [String: Any])?["depends_on_timing"] as? Bool, true)
    XCTAssertTrue(result.runs.contains { $0.status == .done }, "the first model at every rung goes on")
    let expected = result.runs.map { run -> Int? in
      if case .stopped(let step) = run.status { return step }
      return nil
    }
    try assertOutcome(result, output, expected: expected, "asha")
  }

  /// Paused between two rungs (as on SIGTERM), resumed: the same models stop, the survivors end
  /// with the same bytes. And a run killed after a rung's checkpoint but before its record was
  /// written: the resumed run tells the policy again and decides the same.
  func testKillAndResumeInTheMiddleOfSelection() throws {
    let full = try fullSweep()
    let expected = successiveHalving(full.losses, eta: 2)
    let root = try temporaryFolder()
    for pause in [3, 4] {
      let output = root + "/paused-\(pause)"
      let sha = ["selection.name=\"sha\"", "cluster.devices=2"]
      let (paused, _) = try run(sha, output: output, pauseAt: pause)
      XCTAssertTrue(paused.runs.contains { !$0.status.isFinished }, "paused at \(pause)")
      if pause == 4 {
        // The last result of rung 1 (step 4) never made it to the record.
        let path = output + "/selection.json"
        var top = try XCTUnwrap(
          try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        var events = try XCTUnwrap(top["events"] as? [[String: Any]])
        XCTAssertEqual(events.last?["step"] as? Int, 4)
        events.removeLast()
        top["events"] = events
        try JSONSerialization.data(withJSONObject: top).write(to: URL(fileURLWithPath: path))
      }
      let (resumed, _) = try run(sha + ["scheduler.name=\"random\""], output: output, resume: true)
      try assertOutcome(resumed, output, expected: expected, "paused at \(pause), resumed")
    }
  }

  /// The record of a run a resumed run cannot use is bad input naming the file.
  func testBadSelectionRecordIsAnInputError() throws {
    let output = try temporaryFolder() + "/bad-record"
    let sha = ["selection.name=\"sha\"", "cluster.devices=2"]
    _ = try run(sha, output: output, pauseAt: 3)
    let path = output + "/selection.json"
    let good = try String(contentsOfFile: path, encoding: .utf8)
    for bad in [
      "{", good.replacingOccurrences(of: "\"m001\"", with: "\"m009\""),
      good.replacingOccurrences(of: "\"stop\"", with: "\"halt\""),
      good.replacingOccurrences(of: "\"reduction_factor\": 2", with: "\"reduction_factor\": 3"),
    ] {
      try bad.write(toFile: path, atomically: true, encoding: .utf8)
      XCTAssertThrowsError(try run(sha, output: output, resume: true)) { error in
        XCTAssertTrue(error is InputError, "\(error)")
        XCTAssertTrue("\(error)".contains("selection.json"), "\(error)")
      }
    }
    // Random damage: an input error or a good record, never a crash.
    var g = SplitMix64(seed: 7)
    let bytes = Array(good.utf8)
    for _ in 0..<30 {
      var damaged = bytes
      for _ in 0..<3 { damaged[Int(g.next() % UInt64(damaged.count))] = UInt8(truncatingIfNeeded: g.next()) }
      try Data(damaged).write(to: URL(fileURLWithPath: path))
      do {
        _ = try run(sha, output: output, resume: true)
      } catch is InputError {
      } catch {
        XCTFail("damaged record: \(error)")
      }
      try good.write(toFile: path, atomically: true, encoding: .utf8)
    }
  }

  /// A policy option the policy does not know is an error at its line.
  func testUnknownPolicyOptionIsAnErrorAtItsLine() throws {
    let output = try temporaryFolder() + "/option"
    XCTAssertThrowsError(try run(["selection.name=\"sha\"", "selection.grace=3"], output: output)) { error in
      XCTAssertTrue(error is InputError, "\(error)")
      XCTAssertTrue("\(error)".contains("selection.grace"), "\(error)")
    }
  }
}
