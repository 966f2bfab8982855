import Foundation
import HydraBackendSHM
import HydraCore
import HydraKernelsReference
import HydraRuntime
import XCTest

/// `hydra-mpi` as a user runs it: exit codes, messages, and what lands on disk.
final class CommandLineTests: XCTestCase {
  func hydra(_ args: [String]) throws -> (status: Int32, out: String, err: String) { try runTool(args) }

  func tinyGPTJob(_ dir: String, data: String, extra: String = "") -> String {
    """
    [job]
    name = "tiny"
    output = "out"
    seed = 1
    [cluster]
    devices = 2
    kernels = "cpu"
    [data]
    format = "text"
    path = "\(data)"
    validation_fraction = 0.1
    [model]
    kind = "gpt"
    layers = 1
    d_model = 16
    heads = 2
    context = 8
    [train]
    steps = 6
    batch_size = 4
    eval_every = 3
    eval_batches = 2
    checkpoint_every = 3
    [sweep]
    "train.lr" = [1e-2, 1e-3, 1e6]
    \(extra)
    """
  }

  func textFile(_ dir: String, bytes: Int) throws -> String {
    let path = dir + "/text.txt"
    let text = String(repeating: "the quick brown fox jumps over the lazy dog. ", count: bytes / 45 + 1).prefix(bytes)
    try String(text).write(toFile: path, atomically: true, encoding: .utf8)
    return path
  }

  func testRunWritesTheOutputFolderAndReportsADivergedModel() throws {
    let dir = try temporaryFolder()
    let job = try writeJob(dir, tinyGPTJob(dir, data: try textFile(dir, bytes: 4000)))
    let r = try hydra([job])
    XCTAssertEqual(r.status, 0, r.err)
    let out = dir + "/out"
    for file in [
      "job.toml", "summary.json", "metrics.csv", "trace.json", "checkpoints/m000/model.safetensors",
      "checkpoints/m000/config.json",
    ] {
      XCTAssertTrue(FileManager.default.fileExists(atPath: out + "/" + file), file)
    }
    let summary =
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/summary.json")))
      as! [String: Any]
    XCTAssertEqual(summary["job"] as? String, "tiny")
    let models = summary["models"] as! [[String: Any]]
    XCTAssertEqual(models.map { $0["id"] as! String }, ["m000", "m001", "m002"])
    XCTAssertEqual(models.map { $0["status"] as! String }, ["done", "done", "diverged"])
    XCTAssertEqual(models[0]["steps"] as? Int, 6)
    XCTAssertEqual((models[1]["overrides"] as! [String: Any])["train.lr"] as? Double, 1e-3)
    // The diverged model says when; the loss that was not finite is left out of the JSON.
    let divergedAt = try XCTUnwrap(models[2]["diverged_at_step"] as? Int)
    XCTAssertEqual(models[2]["steps"] as? Int, divergedAt)
    XCTAssertLessThan(divergedAt, 6)
    XCTAssertNil(models[2]["train_loss"])
    // metrics.csv: a train row per step per healthy model, a val row at steps 3 and 6.
    let rows = try String(contentsOfFile: out + "/metrics.csv", encoding: .utf8).split(separator: "\n")
    XCTAssertEqual(rows.first, "model,step,split,loss,accuracy,lr,seconds")
    XCTAssertEqual(rows.filter { $0.hasPrefix("m000,") && $0.contains(",train,") }.count, 6)
    XCTAssertEqual(
      rows.filter { $0.hasPrefix("m000,") && $0.contains(",val,") }.map { $0.split(separator: ",")[1] }, ["3", "6"])
    // The summary's validation loss is the last val row of metrics.csv.
    let lastVal = rows.last { $0.hasPrefix("m000,") && $0.contains(",val,") }!.split(separator: ",")[3]
    XCTAssertEqual(Double(lastVal)!, models[0]["val_loss"] as! Double, accuracy: 1e-6)
    XCTAssertTrue(r.out.contains("m002 diverged at step"), r.out)
  }

  /// A checkpoint written by a run, loaded into a fresh model, reproduces the run's final
  /// validation loss: names, shapes and values survive the round trip.
  func testCheckpointReloadsToTheSameValidationLoss() throws {
    let dir = try temporaryFolder()
    let data = try textFile(dir, bytes: 4000)
    let job = try writeJob(dir, tinyGPTJob(dir, data: data).replacingOccurrences(of: "1e-2, 1e-3, 1e6", with: "1e-2"))
    let r = try hydra([job])
    XCTAssertEqual(r.status, 0, r.err)
    let summary =
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/out/summary.json")))
      as! [String: Any]
    let valLoss = (summary["models"] as! [[String: Any]])[0]["val_loss"] as! Double
    // A second job that starts from the checkpoint and trains 0 further steps is not allowed
    // (steps >= 1), so evaluate directly: same data, same windows.
    let kernels = ReferenceKernels()
    let dataset = try Dataset.load(DataSpec(format: .text, path: data, validationFraction: 0.1, context: 8))
    let spec = ModelSpec.gpt(GPTShape(layers: 1, channels: 16, heads: 2, context: 8, vocab: 256))
    let run = try ModelRun(
      index: 0, id: "x", spec: spec, seed: 999,
      settings: TrainSettings(
        steps: 1, batchSize: 4, evalBatches: 2, optimizer: Optimizer(kind: .adamw, lr: 1, totalSteps: 1)),
      data: dataset, shards: [0..<3], backend: SharedMemoryBackend(devices: 1), memory: kernels.memory)
    let fresh = try run.evaluate(kernels: kernels).loss
    try Checkpoint.load(into: run, from: dir + "/out/checkpoints/m000")
    let loaded = try run.evaluate(kernels: kernels).loss
    XCTAssertNotEqual(fresh, valLoss, accuracy: 1e-3)
    XCTAssertEqual(loaded, valLoss, accuracy: 1e-4)  // cpu (the run) vs reference (here) kernels
  }

  func testBadInputExitsTwoNamingTheFileAndLeavesNoOutput() throws {
    let dir = try temporaryFolder()
    let good = try textFile(dir, bytes: 4000)
    let short = dir + "/short.txt"
    try "abc".write(toFile: short, atomically: true, encoding: .utf8)
    let empty = dir + "/empty.txt"
    _ = FileManager.default.createFile(atPath: empty, contents: Data())
    let odd = dir + "/odd.bin"
    _ = FileManager.default.createFile(atPath: odd, contents: Data([1, 0, 2]))
    let csv = dir + "/bad.csv"
    try "1,2,0\n3,x,1\n".write(toFile: csv, atomically: true, encoding: .utf8)
    let labels = dir + "/labels.csv"
    try "1,2,0\n3,4,7\n5,6,1\n".write(toFile: labels, atomically: true, encoding: .utf8)
    let badCheckpoint = dir + "/bad.safetensors"
    _ = FileManager.default.createFile(atPath: badCheckpoint, contents: Data([255, 255, 255, 255, 0, 0, 0, 0, 1, 2]))

    let cases: [(job: String, expect: [String])] = [
      (tinyGPTJob(dir, data: short), ["short.txt", "window"]),
      (tinyGPTJob(dir, data: empty), ["empty.txt"]),
      (
        tinyGPTJob(dir, data: odd).replacingOccurrences(of: "format = \"text\"", with: "format = \"tokens\""),
        ["odd.bin", "odd"]
      ),
      (tinyGPTJob(dir, data: good).replacingOccurrences(of: "heads = 2", with: "heads = 3"), ["job.toml:", "heads"]),
      (
        tinyGPTJob(dir, data: good).replacingOccurrences(
          of: "layers = 1", with: "layers = 1\ninit = \"\(badCheckpoint)\""), ["bad.safetensors"]
      ),
      (mlpJob(csv), ["bad.csv:2", "column 2"]),
      (mlpJob(labels), ["labels.csv:2", "7"]),
      (tinyGPTJob(dir, data: good).replacingOccurrences(of: "vocab", with: "vocab"), []),  // control: good
    ]
    for (i, c) in cases.enumerated() {
      let caseDir = dir + "/case\(i)"
      try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
      let job = try writeJob(caseDir, c.job.replacingOccurrences(of: "steps = 6", with: "steps = 1"))
      let r = try hydra(["run", job])
      if c.expect.isEmpty {
        XCTAssertEqual(r.status, 0, "control case: \(r.err)")
        continue
      }
      XCTAssertEqual(r.status, 2, "case \(i): \(r.err)")
      for word in c.expect { XCTAssertTrue(r.err.contains(word), "case \(i): \(word) not in \(r.err)") }
      XCTAssertFalse(FileManager.default.fileExists(atPath: caseDir + "/out"), "case \(i) left an output folder")
    }
  }

  func mlpJob(_ csv: String) -> String {
    """
    [job]
    name = "mlp"
    output = "out"
    [data]
    format = "csv"
    path = "\(csv)"
    validation_fraction = 0.0
    [model]
    kind = "mlp"
    hidden = [4]
    classes = 3
    [train]
    steps = 6
    batch_size = 2
    """
  }

  /// `plan` simulates the job under every scheduler: with 3 models on 2 devices lrtf must beat
  /// the one-model-at-a-time baselines, which cannot use the second device.
  func testPlanComparesTheSchedulers() throws {
    let dir = try temporaryFolder()
    let job = try writeJob(dir, tinyGPTJob(dir, data: try textFile(dir, bytes: 4000)))
    let r = try hydra(["plan", job, "--devices", "2", "--gflops", "0.01"])
    XCTAssertEqual(r.status, 0, r.err)
    var makespans: [String: Double] = [:]
    for line in r.out.split(separator: "\n") {
      let parts = line.split(separator: " ", omittingEmptySubsequences: true)
      if parts.count >= 3, let m = Double(parts[1]) { makespans[String(parts[0])] = m }
    }
    XCTAssertEqual(
      Set(makespans.keys), ["fifo", "lrtf", "model-parallel", "planned", "random", "round-robin", "sequential"])
    XCTAssertLessThanOrEqual(makespans["planned"]!, makespans["lrtf"]!)
    XCTAssertLessThan(makespans["lrtf"]!, makespans["sequential"]! * 0.75)
    XCTAssertEqual(makespans["sequential"]!, makespans["model-parallel"]!, accuracy: 1e-9)
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"), "plan must not write")
  }

  func testValidateAndPluginsDescribeTheJob() throws {
    let dir = try temporaryFolder()
    let job = try writeJob(dir, tinyGPTJob(dir, data: try textFile(dir, bytes: 4000)))
    let v = try hydra(["validate", job])
    XCTAssertEqual(v.status, 0, v.err)
    XCTAssertTrue(v.out.contains("3 model(s)"))
    XCTAssertTrue(v.out.contains("block h.0"))
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"), "validate must not write")
    let p = try hydra(["plugins"])
    // One line per plugin: kind, name, ABI version ("-" for a built-in), origin.
    XCTAssertTrue(p.out.contains("\nkernels      cpu               -    built-in\n"), p.out)
    XCTAssertTrue(p.out.contains("\nscheduler    lrtf              -    built-in\n"), p.out)
  }
}

/// `host_memory` and `device_memory` bound the process: trained through the tool, a sweep whose
/// state is several times its budgets stays within them plus a stated overhead.
final class ResidentMemoryTests: XCTestCase {
  func testResidentMemoryStaysWithinTheBudgetsPlusOverhead() throws {
    let dir = try temporaryFolder()
    // 12 models of ~19 MiB of state each (adamw): 230 MiB, against 24 MiB of host store and two
    // devices of 24 MiB: without spilling, the process would hold more than the bound below.
    let job = try writeJob(
      dir,
      """
      [job]
      name = "rss"
      output = "out"
      [cluster]
      devices = 2
      device_memory = "24MiB"
      host_memory = "24MiB"
      [data]
      format = "text"
      path = "\(repositoryRoot)/Examples/data/fortunes.txt"
      [model]
      kind = "gpt"
      layers = 4
      d_model = 192
      heads = 4
      context = 32
      [train]
      steps = 2
      batch_size = 4
      eval_every = 0
      eval_batches = 1
      [sweep]
      "train.lr" = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4, 9e-4, 1e-3, 2e-3, 3e-3]
      """)
    let (status, _, err) = try runTool(["run", job])
    XCTAssertEqual(status, 0, err)
    let summary = try XCTUnwrap(
      JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/out/summary.json")))
        as? [String: Any])
    let memory = try XCTUnwrap(summary["memory"] as? [String: Any])
    let store = try XCTUnwrap(memory["host_store"] as? [String: Any])
    XCTAssertGreaterThan(try XCTUnwrap(store["bytes_written_to_disk"] as? Int), 100 << 20, "the state spilled")
    let rss = try XCTUnwrap(memory["process_peak_resident_bytes"] as? Int)
    // The stated overhead: 120 MiB for the program, its libraries, OpenBLAS's buffers and the data
    // (about 80 MiB measured), and one model's state while its final checkpoint is written.
    let budgets = (24 << 20) + 2 * (24 << 20)
    XCTAssertLessThanOrEqual(rss, budgets + (120 << 20) + (20 << 20), "peak resident \(rss >> 20) MiB")
  }
}
