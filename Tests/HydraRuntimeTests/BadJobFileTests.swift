import Foundation
import XCTest

/// Bad job files through the real tool: each exits 2 with a message naming the job file and line,
/// and leaves no output folder behind. (The decoding of each case is tested in detail in
/// HydraConfigTests; this pins the user-visible contract end to end.)
final class BadJobFileTests: XCTestCase {
  func testBadJobFilesExitTwoNamingTheLineAndWriteNothing() throws {
    let dir = try temporaryFolder()
    let data = dir + "/text.txt"
    try String(repeating: "bad jobs. ", count: 300).write(toFile: data, atomically: true, encoding: .utf8)
    let good = """
      [job]
      name = "bad"
      output = "out"
      [cluster]
      devices = 2
      [data]
      format = "text"
      path = "\(data)"
      [model]
      kind = "gpt"
      layers = 1
      d_model = 16
      heads = 2
      context = 8
      [train]
      steps = 2
      batch_size = 2
      [sweep]
      "train.lr" = [1e-3, 3e-3]
      """
    // (what to replace, with what, the line the message must name, a word it must contain)
    let cases: [(String, String, Int?, String)] = [
      ("devices = 2", "devices = 0", 5, "devices"),
      ("devices = 2", "devices = 2\nbogus = 1", 6, "bogus"),
      ("devices = 2", "devices = \"two\"", 5, "devices"),
      ("heads = 2", "heads = 3", nil, "heads"),
      ("steps = 2", "steps = -1", 16, "steps"),
      ("\"train.lr\" = [1e-3, 3e-3]", "\"train.lr\" = []", 19, "empty"),
      ("\"train.lr\" = [1e-3, 3e-3]", "\"train.lrr\" = [1e-3]", 19, "train.lrr"),
      ("\"train.lr\" = [1e-3, 3e-3]", "\"train.lr\" = [1e-3, 1e-3]", nil, "duplicate"),
      ("path = \"\(data)\"", "path = \"\(dir)/missing.txt\"", 8, "missing.txt"),
      ("[cluster]", "[cluster]\ndevice_memory = \"12 GB of RAM\"", 5, "device_memory"),
      ("[cluster]", "[cluster]\ndevice_memory = \"1KiB\"", nil, "device_memory"),
      ("[cluster]", "[cluster]\nkernels = \"gpu\"", 5, "cpu, discrete, reference"),
      ("[train]", "[scheduler]\nname = \"lrft\"\n[train]", 16, "lrtf"),
      ("[train]", "[partitioner]\nname = \"fixed\"\nboundaries = [2, 1]\n[train]", nil, "boundaries"),
      ("[train]", "[scheduler]\nname = \"fifo\"\nspeed = 3\n[train]", nil, "no options"),
      ("[job]", "[jobs]", 1, "jobs"),
      ("name = \"bad\"", "name = \"bad", 2, "job.toml"),
      // Text data has 256 byte values: the job file's vocab is wrong, not the data file.
      ("context = 8", "context = 8\nvocab = 100", 15, "vocab = 100"),
    ]
    for (i, c) in cases.enumerated() {
      XCTAssertTrue(good.contains(c.0), "case \(i): \(c.0) not in the good job")
      let caseDir = dir + "/case\(i)"
      try FileManager.default.createDirectory(atPath: caseDir, withIntermediateDirectories: true)
      let job = try writeJob(caseDir, good.replacingOccurrences(of: c.0, with: c.1))
      let r = try runTool(["run", job])
      XCTAssertEqual(r.status, 2, "case \(i): \(r.err)")
      if let line = c.2 { XCTAssertTrue(r.err.contains("job.toml:\(line)"), "case \(i): no line \(line) in \(r.err)") }
      XCTAssertTrue(r.err.contains("job.toml"), "case \(i): \(r.err)")
      XCTAssertTrue(r.err.contains(c.3), "case \(i): \(c.3) not in \(r.err)")
      XCTAssertFalse(FileManager.default.fileExists(atPath: caseDir + "/out"), "case \(i) left an output folder")
    }
    // The good job itself runs (so the cases above fail for their own reason).
    let r = try runTool(["run", try writeJob(dir, good)])
    XCTAssertEqual(r.status, 0, r.err)
  }

  /// A sweep over vocab: every model's tokens are checked against its own vocab (the data set was
  /// once read for the first model only, and a second model with a smaller vocab trained on tokens
  /// beyond its embedding).
  func testEveryModelsTokensAreCheckedAgainstItsVocab() throws {
    let dir = try temporaryFolder()
    let tokens = (0..<4000).map { UInt16($0 % 300) }
    try tokens.withUnsafeBytes { try Data($0).write(to: URL(fileURLWithPath: dir + "/t.bin")) }
    let job = """
      [job]
      name = "vocabs"
      output = "out"
      [data]
      format = "tokens"
      path = "t.bin"
      [model]
      kind = "gpt"
      layers = 1
      d_model = 16
      heads = 2
      context = 8
      [train]
      steps = 2
      batch_size = 2
      [sweep]
      "model.vocab" = [512, 256]
      """
    let r = try runTool(["run", try writeJob(dir, job)])
    XCTAssertEqual(r.status, 2, r.err)
    XCTAssertTrue(r.err.contains("t.bin") && r.err.contains("not below vocab 256"), r.err)
    XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out"))
    // With both vocabs large enough it trains.
    let ok = try runTool(["run", try writeJob(dir, job.replacingOccurrences(of: "[512, 256]", with: "[512, 300]"))])
    XCTAssertEqual(ok.status, 0, ok.err)
  }
}

/// Runs the hydra-mpi built beside this test bundle.
func runTool(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
  let bundle = URL(fileURLWithPath: CommandLine.arguments.first { $0.hasSuffix(".xctest") } ?? CommandLine.arguments[0])
  let p = Process()
  p.executableURL = bundle.deletingLastPathComponent().appendingPathComponent("hydra-mpi")
  p.arguments = args
  let out = Pipe(), err = Pipe()
  p.standardOutput = out
  p.standardError = err
  try p.run()
  let o = out.fileHandleForReading.readDataToEndOfFile()
  let e = err.fileHandleForReading.readDataToEndOfFile()
  p.waitUntilExit()
  return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
}
