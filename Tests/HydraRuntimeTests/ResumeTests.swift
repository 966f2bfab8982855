import Foundation
import XCTest

/// A run stopped part-way and resumed from its checkpoints ends with the same bytes as a run that
/// was never stopped: weights, optimizer state, and the step every file records.
final class ResumeTests: XCTestCase {
  func job(_ dir: String, data: String) throws -> String {
    try writeJob(
      dir,
      """
      [job]
      name = "resume"
      output = "out"
      seed = 12
      [cluster]
      devices = 2
      device_memory = "1MiB"
      host_memory = "64KiB"
      [data]
      format = "text"
      path = "\(data)"
      [model]
      kind = "gpt"
      layers = 2
      d_model = 16
      heads = 2
      context = 8
      [train]
      steps = 7
      batch_size = 4
      warmup_steps = 2
      eval_every = 0
      eval_batches = 2
      [sweep]
      "train.lr" = [3e-3, 1e-3]
      "train.optimizer" = ["adamw", "sgd"]
      """)
  }

  func testAPausedAndResumedRunEndsByteForByteWhereAnUninterruptedOneDoes() throws {
    let root = try temporaryFolder()
    let data = root + "/text.txt"
    try String(repeating: "stopped and started again, the same. ", count: 200).write(
      toFile: data, atomically: true, encoding: .utf8)
    let whole = root + "/whole", parts = root + "/parts"
    for d in [whole, parts] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }

    let a = try runTool(["run", try job(whole, data: data)])
    XCTAssertEqual(a.status, 0, a.err)
    let first = try runTool(["run", try job(parts, data: data), "--pause-at", "3"])
    XCTAssertEqual(first.status, 0, first.err)
    let paused =
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: parts + "/out/summary.json")))
      as! [String: Any]
    XCTAssertEqual(
      (paused["models"] as! [[String: Any]]).map { $0["status"] as! String }, ["paused", "paused", "paused", "paused"])
    XCTAssertEqual((paused["models"] as! [[String: Any]]).map { $0["steps"] as! Int }, [3, 3, 3, 3])
    let second = try runTool(["run", parts + "/job.toml", "--resume"])
    XCTAssertEqual(second.status, 0, second.err)
    XCTAssertTrue(second.out.contains("m003: resumed at step 3"), second.out)

    try assertSameEnd(whole, parts)
    // metrics.csv carries on: one train row per step of each model, none twice.
    let rows = try String(contentsOfFile: parts + "/out/metrics.csv", encoding: .utf8).split(separator: "\n")
    XCTAssertEqual(rows.filter { $0.hasPrefix("m000,") && $0.contains(",train,") }.count, 7)
  }

  /// The newest checkpoint of every model, and the files transformers loads, byte for byte.
  func assertSameEnd(_ a: String, _ b: String, file: StaticString = #filePath, line: UInt = #line) throws {
    for model in ["m000", "m001", "m002", "m003"] {
      for name in [
        "step-00000007/model.safetensors", "step-00000007/optimizer.safetensors", "step-00000007/trainer_state.json",
        "step-00000007/manifest.json", "model.safetensors", "config.json",
      ] {
        let x = try Data(contentsOf: URL(fileURLWithPath: "\(a)/out/checkpoints/\(model)/\(name)"))
        let y = try Data(contentsOf: URL(fileURLWithPath: "\(b)/out/checkpoints/\(model)/\(name)"))
        XCTAssertEqual(x, y, "\(model)/\(name)", file: file, line: line)
      }
    }
  }

  /// A damaged newest checkpoint (a flipped byte, a truncated file, a missing file) is skipped with
  /// a warning naming the file; the model resumes from the one before and ends where an
  /// uninterrupted run does. What an interrupted write left is removed.
  func testADamagedNewestCheckpointFallsBackToThePreviousOne() throws {
    let root = try temporaryFolder()
    let data = root + "/text.txt"
    try String(repeating: "damaged, then mended. ", count: 300).write(toFile: data, atomically: true, encoding: .utf8)
    let whole = root + "/whole"
    try FileManager.default.createDirectory(atPath: whole, withIntermediateDirectories: true)
    XCTAssertEqual(try runTool(["run", try job(whole, data: data)]).status, 0)
    for damage in ["flip", "truncate", "remove"] {
      let parts = root + "/" + damage
      try FileManager.default.createDirectory(atPath: parts, withIntermediateDirectories: true)
      let jobFile = try job(parts, data: data)
      let first = try runTool(["run", jobFile, "--pause-at", "4", "--set", "train.checkpoint_every=1"])
      XCTAssertEqual(first.status, 0, first.err)
      let folder = parts + "/out/checkpoints/m001"
      XCTAssertEqual(
        try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.hasPrefix("step-") }.sorted(),
        ["step-00000003", "step-00000004"], "keep_checkpoints = 2")
      let victim: String
      switch damage {
      case "flip":
        victim = folder + "/step-00000004/model.safetensors"
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: victim)))
        bytes[bytes.count - 5] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: victim))
      case "truncate":
        victim = folder + "/step-00000004/optimizer.safetensors"
        let bytes = try Data(contentsOf: URL(fileURLWithPath: victim))
        try bytes.prefix(bytes.count / 2).write(to: URL(fileURLWithPath: victim))
      default:
        victim = folder + "/step-00000004/trainer_state.json"
        try FileManager.default.removeItem(atPath: victim)
      }
      try FileManager.default.createDirectory(
        atPath: folder + "/.tmp-step-00000005-4242", withIntermediateDirectories: false)
      let second = try runTool(["run", jobFile, "--resume", "--set", "train.checkpoint_every=1"])
      XCTAssertEqual(second.status, 0, second.err)
      let said = second.out + second.err
      XCTAssertTrue(said.contains("warning: m001: \(victim)"), said)
      XCTAssertTrue(said.contains("m001: resumed at step 3"), said)
      XCTAssertTrue(said.contains("m000: resumed at step 4"), said)
      XCTAssertTrue(said.contains(".tmp-step-00000005-4242, left by an interrupted checkpoint"), said)
      XCTAssertFalse(FileManager.default.fileExists(atPath: folder + "/.tmp-step-00000005-4242"))
      try assertSameEnd(whole, parts)
    }
  }
}
