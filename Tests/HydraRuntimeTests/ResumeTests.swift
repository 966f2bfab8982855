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

    for model in ["m000", "m001", "m002", "m003"] {
      for file in ["model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
        let x = try Data(contentsOf: URL(fileURLWithPath: "\(whole)/out/checkpoints/\(model)/\(file)"))
        let y = try Data(contentsOf: URL(fileURLWithPath: "\(parts)/out/checkpoints/\(model)/\(file)"))
        XCTAssertEqual(x, y, "\(model)/\(file)")
      }
    }
    // metrics.csv carries on: one train row per step of each model, none twice.
    let rows = try String(contentsOfFile: parts + "/out/metrics.csv", encoding: .utf8).split(separator: "\n")
    XCTAssertEqual(rows.filter { $0.hasPrefix("m000,") && $0.contains(",train,") }.count, 7)
  }

  func testACheckpointCutShortBetweenItsFilesIsRefused() throws {
    let root = try temporaryFolder()
    let data = root + "/text.txt"
    try String(repeating: "cut short. ", count: 400).write(toFile: data, atomically: true, encoding: .utf8)
    let jobFile = try job(root, data: data)
    XCTAssertEqual(try runTool(["run", jobFile, "--pause-at", "2"]).status, 0)
    // The weights of a later step beside the trainer state of an earlier one.
    let folder = root + "/out/checkpoints/m000"
    let state = try String(contentsOfFile: folder + "/trainer_state.json", encoding: .utf8)
    try state.replacingOccurrences(of: "\"step\":2", with: "\"step\":1").write(
      toFile: folder + "/trainer_state.json", atomically: true, encoding: .utf8)
    let r = try runTool(["run", jobFile, "--resume"])
    XCTAssertEqual(r.status, 2, r.err)
    XCTAssertTrue(r.err.contains("cut short"), r.err)
  }
}
